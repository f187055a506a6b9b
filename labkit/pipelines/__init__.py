"""Techniques combined for the tour and the benchmarks: named pipelines, the Pareto front, the family matrix."""
