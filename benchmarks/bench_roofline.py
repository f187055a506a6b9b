"""This machine's roof, the intensity of MiniLM's layers, and the roofline's predicted speed-ups beside measured ones.

    .venv/bin/python benchmarks/bench_roofline.py [--rounds 5]

The roof is measured afresh (STREAM copy and triad, square matmul peaks in fp32, bf16 and int8), not read from the
cache. Each technique is timed at batch 32 interleaved with the fp32 baseline; the prediction is
`roofline.predicted_speedup` from the roof and the model's multiply-adds and bytes (notebook 00c).
"""

from __future__ import annotations

import argparse

import pandas as pd

from labkit.core import machine, measure, model, roofline
from labkit.dynamic.tokens import token_pruning
from labkit.prune.prune import structured
from labkit.quant.floats import to_precision
from labkit.quant.int8 import dynamic_int8
from labkit.runtimes import onnx, openvino
from labkit.sparse.layers import to_sparse


def main(argv: list[str] | None = None) -> int:
    """Print the roof, the intensity table, the predicted and measured speed-ups, and the forward's split."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per technique (default 5)")
    args = parser.parse_args(argv)
    print(machine.describe())
    roof = roofline.measure_roof()
    print(f"\ncopy {roof.copy_gbs:.1f} GB/s, triad {roof.triad_gbs:.1f} GB/s (arrays of {roof.array_mib:.0f} MiB)")
    print(pd.DataFrame(roof.peak_sizes).round(1).to_markdown())
    clf, tok = model.load_baseline()
    rows = []
    for batch, tokens in [(1, 64), (1, 128), (32, 64), (32, 128)]:
        for op in roofline.cost(clf, batch, tokens).ops:
            if op.macs and (".layer.0." in op.name or "layer." not in op.name):  # block 0 stands for all six
                rows.append({"layer": op.name, "shape": f"b{batch} x {tokens}", "intensity": round(op.intensity, 1)})
    print("\nmultiply-adds per byte (fp32):")
    print(pd.DataFrame(rows).pivot(index="layer", columns="shape", values="intensity").to_markdown())
    builders = {"bf16": lambda: to_precision(clf, "bf16"), "int8 torch": lambda: dynamic_int8(clf, "blocks"),
                "int8 ONNX Runtime": lambda: onnx.to_onnx(clf, optimize=False, int8=True),
                "sparse 90% FFN (CSR)": lambda: to_sparse(clf, 0.9, "ffn"),
                "structured (1/3 heads, 30% FFN)": lambda: structured(clf, heads=1 / 3, ffn=0.7),
                "tokens: keep 0.5 from layer 2": lambda: token_pruning(clf, 0.5, 2)}
    if openvino.available():
        builders["int8 OpenVINO (NNCF)"] = lambda: openvino.to_openvino(clf, int8=True, tokenizer=tok)
    out = []
    for name, build in builders.items():
        m = build()
        lat = measure.compare_latency({"fp32": clf, name: m}, tok, 32, 1, args.rounds)
        s = measure.speedups(lat, "fp32")[name]
        predicted, _ = roofline.predicted_speedup(m, clf, roof, 32, lat["fp32"]["seq_len"])
        out.append({"technique": name, "predicted b32": None if predicted is None else round(predicted, 2),
                    "measured b32": round(s["speedup"], 2), "range": f"[{s['lo']:.2f}, {s['hi']:.2f}]"})
        del m
    print("\n" + pd.DataFrame(out).to_markdown(index=False))
    for batch in (1, 32):
        bound = roofline.time_bound(roofline.cost(clf, batch, 64), roof)
        print(f"batch {batch} x 64 tokens: bound {1000 * bound['seconds']:.2f} ms, of which memory-bound "
              f"{bound['memory_s'] / bound['seconds']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
