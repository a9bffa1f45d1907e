"""What every training method shares: AWD and the anchor it pulls toward, weight distances, compute and
memory accounting (one builder of the metrics row), prompt sampling, and the Trainer seam.

es/ and rl/ both import from here and never from each other; this package imports nothing of esft above it
(only esft.errors)."""
