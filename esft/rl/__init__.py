"""Gradient baselines behind the ES trainer's seam: GRPO through TRL (grpo.py) and PPO on the shared Policy
(ppo.py); common.py holds what they share (anchor and AWD, sampled rollouts, compute and memory accounting)."""
