"""The small language model lab: loading SmolLM2 offline, perplexity, weight-only quantization, kernels."""
