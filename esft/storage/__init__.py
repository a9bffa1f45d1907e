"""What is on disk: the run-dir contract, checkpoints, locks and fault injection. Imports only esft.errors."""
