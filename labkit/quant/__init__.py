"""Fewer bits per number: float formats, affine quantization, simulated and real int8."""
