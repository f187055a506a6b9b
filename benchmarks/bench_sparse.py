"""Sparse storage and compute on the classifier's FFN layers: round trips, bytes and matmul time, one run.

Run: flock /tmp/labkit-cpu.lock .venv/bin/python benchmarks/bench_sparse.py   (LABKIT_FAST=1 for the CI model)
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from labkit.core import machine, measure, model
from labkit.sparse import sparse


def round_trips(w: torch.Tensor) -> pd.DataFrame:
    """Exact round trip of every format, value type and compressor at sparsities 0-99%."""
    rows = []
    for s in (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99):
        ws = sparse.sparsify(w, s)
        df = sparse.format_sizes(ws, verify=True)
        rows.append({"sparsity": s, "checked": len(df), "all_exact": bool(df["round_trip_exact"].all())})
    return pd.DataFrame(rows)


def ffn_bytes(base, sparsity: float = 0.9) -> pd.DataFrame:
    """Best format vs dense float32 for every FFN weight at `sparsity` (real encoded bytes)."""
    rows = []
    for values in sparse.VALUES:
        dense = best = plain = 0
        for name in sparse.linear_layers(base, "ffn"):
            w = sparse.sparsify(base.get_submodule(name).weight, sparsity)
            dense += len(sparse.encode(w, "dense", "f32"))
            fmt, comp, size = sparse.best_format(w, values, compress=(None, "zlib"))
            pfmt, _, psize = sparse.best_format(w, values)
            best, plain = best + size, plain + psize
        rows.append({"values": values, "dense_f32_bytes": dense, "best_uncompressed": plain,
                     "format": pfmt, "x_smaller": dense / plain, "best_with_zlib": best,
                     "format+zlib": f"{fmt}{'+' + comp if comp else ''}", "x_smaller_zlib": dense / best})
    return pd.DataFrame(rows)


def main() -> None:
    start = time.perf_counter()
    base, tok = model.load_baseline(progress=False)
    ffn = sparse.linear_layers(base, "ffn")
    w = base.get_submodule(ffn[0]).weight.detach()
    print(f"CPU: {machine.cpu_name()} ({machine.cpu_features()}), threads: {torch.get_num_threads()}, "
          f"torch {torch.__version__}\n")

    rt = round_trips(w[:256])
    print("Round trips (every format x f32/int8 x none/zlib/lzma), one FFN weight's first 256 rows:")
    print(rt.to_string(index=False), "\n")

    print("Break-even sparsity (uncompressed bytes <= dense with the same values), FFN shape", tuple(w.shape))
    be = pd.DataFrame([{"format": f, **{v: sparse.break_even(tuple(w.shape), f, v) for v in sparse.VALUES}}
                       for f in sparse.FORMATS if f != "dense"])
    print(be.to_string(index=False, float_format=lambda v: f"{v:.3f}"), "\n")

    fb = ffn_bytes(base)
    print("All FFN weights at 90% magnitude sparsity, best format vs dense float32 (target >= 4x with int8):")
    print(fb.to_string(index=False, float_format=lambda v: f"{v:.2f}"), "\n")

    print("Matmul y = x W^T, x = 32 x 30 tokens, median ms:")
    for shape in [(384, 384), (1536, 384), (384, 1536)]:
        t = sparse.matmul_times(shape, densities=(1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01))
        print(f"shape {shape}: torch CSR beats dense up to density {sparse.crossover(t, 'torch_csr')}, "
              f"scipy CSR up to {sparse.crossover(t, 'scipy_csr')}")
        print(t.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print()

    print("Whole classifier, FFN layers as torch CSR vs dense (batch 32, real snippets):")
    models = {"dense": base, "FFN 90% masked dense": sparse.pruned_dense(base, 0.9),
              "FFN 90% CSR": sparse.to_sparse(base, 0.9), "FFN 99% CSR": sparse.to_sparse(base, 0.99)}
    lat = measure.compare_latency(models, tok, 32)
    d = lat["dense"]["median_ms"]
    print(pd.DataFrame([{"model": k, "median_ms": v["median_ms"], "speedup_vs_dense": d / v["median_ms"]}
                        for k, v in lat.items()]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nbench_sparse done in {time.perf_counter() - start:.0f} s")
    assert rt["all_exact"].all(), "a round trip was not exact"
    assert np.isfinite(fb["x_smaller"]).all()


if __name__ == "__main__":
    main()
