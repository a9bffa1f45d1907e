"""The command line's work behind esft/cli.py: train (the Hydra bridge), its preflight check and help, replay."""
