"""A classroom on a hub: each learner's limits and the kernels' memory check."""
