"""The ground under every lesson: data and its split, the baseline, the parts of a classifier, measurement,
training and checkpoints."""
