"""Techniques combined: pipelines, the Pareto front, scaling, security, the dashboard, the family matrix."""
