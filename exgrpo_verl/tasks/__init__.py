"""Synthetic tasks with verifiable rewards, small enough for a tiny model on a CPU."""
