"""Sparse storage and kernels: formats and their bytes, CSR layers."""
