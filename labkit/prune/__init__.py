"""Pruning: masks that zero weights, structured pruning that removes heads and neurons, recovery."""
