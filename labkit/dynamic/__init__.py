"""Decisions made at run time: token pruning, per-batch activation scales, gradual pruning."""
