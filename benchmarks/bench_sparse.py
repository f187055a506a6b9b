"""Sparse storage and compute on the classifier's FFN layers: round trips, bytes and matmul time, one run.

Run: flock /tmp/labkit-cpu.lock .venv/bin/python benchmarks/bench_sparse.py   (LABKIT_FAST=1 for the CI model)
"""

from __future__ import annotations

import time
import zlib

import pandas as pd
import scipy.sparse as sps
import torch

from labkit.core import machine, measure, model, parts
from labkit.prune.masks import magnitude_mask, two_four_mask
from labkit.sparse.formats import FORMATS, VALUES, decode, format_arrays, nbytes
from labkit.sparse.layers import to_sparse


def _expected(w: torch.Tensor, values: str) -> torch.Tensor:
    return w if values == "f32" else decode(format_arrays(w, "dense", "int8"), "dense", tuple(w.shape))


def round_trips(w: torch.Tensor) -> pd.DataFrame:
    """Exact round trip of every format and value type at sparsities 0-99%."""
    rows = []
    for s in (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99):
        ws = w * magnitude_mask(w, s)
        exact = [torch.equal(decode(format_arrays(src, fmt, v), fmt, tuple(w.shape)), _expected(src, v))
                 for fmt in FORMATS for src in [ws * two_four_mask(ws) if fmt == "2:4" else ws] for v in VALUES]
        rows.append({"sparsity": s, "checked": len(exact), "all_exact": all(exact)})
    return pd.DataFrame(rows)


def ffn_bytes(base, sparsity: float = 0.9) -> pd.DataFrame:
    """Smallest format vs dense float32 over every FFN weight at `sparsity` (bytes of the arrays, and zlib of them)."""
    rows = []
    for values in VALUES:
        dense = plain = packed = 0
        for layer in parts.linears(base, "ffn").values():
            w = (layer.weight.detach() * magnitude_mask(layer.weight, sparsity)).cpu()
            sizes = {fmt: format_arrays(w, fmt, values) for fmt in FORMATS[:-1]}
            best = min(sizes, key=lambda f: nbytes(sizes[f]))
            dense += w.numel() * 4
            plain += nbytes(sizes[best])
            packed += len(zlib.compress(b"".join(a.tobytes() for a in sizes[best].values()), 9))
        rows.append({"values": values, "dense_f32_bytes": dense, "format": best, "best_uncompressed": plain,
                     "x_smaller": dense / plain, "with_zlib": packed, "x_smaller_zlib": dense / packed})
    return pd.DataFrame(rows)


def matmul(shape: tuple[int, int], densities=(1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01), tokens: int = 32 * 30):
    """Median ms of y = x W^T with W dense, torch CSR and scipy CSR, timed interleaved at each density."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, shape[1], generator=gen)
    rows = []
    for d in densities:
        w = torch.randn(shape, generator=gen)
        w = w * magnitude_mask(w, 1 - d)
        c = w.to_sparse_csr()
        wc = torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(), c.values(), c.shape)
        ws, xn = sps.csr_matrix(w.numpy()), x.numpy()
        t = measure.compare_latency({"dense": lambda: torch.nn.functional.linear(x, w),
                                     "torch_csr": lambda: torch.sparse.mm(wc, x.T),
                                     "scipy_csr": lambda: ws @ xn.T})
        rows.append({"density": d, **{k: v["median_ms"] for k, v in t.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    start = time.perf_counter()
    base, tok = model.load_baseline(progress=False)
    w = next(iter(parts.linears(base, "ffn").values())).weight.detach().cpu()
    print(f"{machine.describe()}, torch {torch.__version__}\n")

    rt = round_trips(w[:256])
    print("Round trips (every format x f32/int8), one FFN weight's first 256 rows:")
    print(rt.to_string(index=False), "\n")

    fb = ffn_bytes(base)
    print("All FFN weights at 90% magnitude sparsity, smallest format vs dense float32 (target >= 4x with int8):")
    print(fb.to_string(index=False, float_format=lambda v: f"{v:.2f}"), "\n")

    print("Matmul y = x W^T, x = 32 x 30 tokens, median ms, interleaved:")
    for shape in [(384, 384), (1536, 384), (384, 1536)]:
        t = matmul(shape)
        for b in ("torch_csr", "scipy_csr"):
            wins = t[t[b] < t["dense"]]["density"]
            print(f"shape {shape}: {b} beats dense up to density {wins.max() if len(wins) else None}")
        print(t.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print()

    print("Whole classifier, FFN layers as torch CSR vs dense (batch 32, real snippets):")
    masked = parts.clone(base)
    for layer in parts.linears(masked, "ffn").values():
        with torch.no_grad():
            layer.weight.mul_(magnitude_mask(layer.weight, 0.9))
    models = {"dense": base, "FFN 90% masked dense": masked, "FFN 90% CSR": to_sparse(base, 0.9),
              "FFN 99% CSR": to_sparse(base, 0.99)}
    speed = measure.speedups(measure.compare_latency(models, tok, 32), "dense")
    print(pd.DataFrame([{"model": k, "speedup_vs_dense": v["speedup"], "per_round_lo": v["lo"], "per_round_hi": v["hi"]}
                        for k, v in speed.items()]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nbench_sparse done in {time.perf_counter() - start:.0f} s")
    assert rt["all_exact"].all(), "a round trip was not exact"


if __name__ == "__main__":
    main()
