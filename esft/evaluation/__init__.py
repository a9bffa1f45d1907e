"""Scoring every task at a checkpoint (generate, exact match, log-likelihood) and the off-task KL."""
