"""torchrun: the process group (a leaf), population sharding, and the leader/follower roles of a run."""
