"""Pruning: the one magnitude mask, unstructured zeros, structured cuts of heads and neurons, recovery, plans."""
