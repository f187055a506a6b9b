"""Quantization targets, measured side by side in one run on the cached baseline.

    python benchmarks/bench_quantize.py                 # everything (about 8 minutes on 2 cores)
    python benchmarks/bench_quantize.py --section int8  # real int8 only: size, latency, ratios to torch.ao / ORT

The ORT reference is built with ONNX Runtime's documented tools only (labkit.runtimes.openvino.ort_reference), so it does
not compare labkit against itself; benchmarks/bench_runtimes.py adds OpenVINO and NNCF.
    python benchmarks/bench_quantize.py --section accuracy --qat-steps 150
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings

import torch
from torch import nn

from labkit.core import data, machine, measure, model, parts
from labkit.quant import calibrate as C
from labkit.quant import quantize as Q
from labkit.runtimes import onnx
from labkit.runtimes import openvino as runtimes


def _linear_weight_bytes(model: nn.Module) -> int:
    """Serialized bytes of every Linear weight in the encoder (float or packed int8), with torch's format."""
    weights = {}
    for name, m in model.named_modules():
        if not name.startswith("bert.encoder"):
            continue
        if isinstance(m, nn.Linear):
            weights[name] = m.weight.detach()
        elif callable(getattr(m, "weight", None)):  # torch's dynamic int8 Linear: weight() unpacks the int8 tensor
            weights[name] = m.weight()
    buf = io.BytesIO()
    torch.save(weights, buf)
    return buf.getbuffer().nbytes


def _torch_ao_dynamic(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic


        return quantize_dynamic(parts.clone(model), {nn.Linear}, dtype=torch.qint8)


def _ort_reference(model: nn.Module) -> nn.Module:
    """ONNX Runtime's own recipe (no labkit ONNX code): torch.onnx.export, ORT's BERT optimizer, quantize_dynamic."""
    return runtimes.ort_reference(model, int8=True)


def section_int8(base, tok, reference, labels) -> None:

    t0 = time.perf_counter()
    models = {"fp32": base,
              "labkit int8 (torch)": Q.to_int8(base),
              "labkit int8 (onnxruntime)": Q.to_int8(base, backend="onnxruntime"),
              "labkit ORT fused + int8": onnx.to_onnx(base, optimize=True, int8=True),
              "torch.ao quantize_dynamic": _torch_ao_dynamic(base),
              "ORT reference (optimizer + quantize_dynamic)": _ort_reference(base)}
    print(f"built int8 models in {time.perf_counter() - t0:.0f} s")
    lat1 = measure.compare_latency(models, tok, 1)
    lat32 = measure.compare_latency(models, tok, 32)
    rows = []
    for name, m in models.items():
        preds = measure.predictions(m, tok, "test")
        rows.append({"model": name, "accuracy": (preds == labels).mean(),
                     "agreement": measure.agreement(preds, reference),
                     "size_mb": measure.serialized_bytes(m) / 1e6,
                     "b1_ms": lat1[name]["median_ms"], "b32_ms": lat32[name]["median_ms"]})
    import pandas as pd

    df = pd.DataFrame(rows).set_index("model")
    fp = df.loc["fp32"]
    df["size_x_vs_fp32"] = fp["size_mb"] / df["size_mb"]
    df["speedup_b32"] = fp["b32_ms"] / df["b32_ms"]
    df["speedup_b1"] = fp["b1_ms"] / df["b1_ms"]
    print(f"\nReal int8 on {machine.cpu_name()} ({machine.cpu_features()}), {torch.get_num_threads()} threads; "
          f"batch 32 = {lat32['fp32']['seq_len']} tokens padded; median of {lat32['fp32']['repeats']} interleaved runs")
    print(df.to_string(float_format=lambda v: f"{v:.3f}"))
    enc_fp32, enc_int8 = _linear_weight_bytes(base), _linear_weight_bytes(models["labkit int8 (torch)"])
    print(f"\nencoder Linear weights serialized: fp32 {enc_fp32 / 1e6:.1f} MB, int8 {enc_int8 / 1e6:.1f} MB, "
          f"{enc_fp32 / enc_int8:.2f}x smaller (target >= 3.9x)")
    for ours in ("labkit int8 (torch)", "labkit int8 (onnxruntime)"):
        for ref in ("torch.ao quantize_dynamic", "ORT reference (optimizer + quantize_dynamic)"):
            print(f"{ours} vs {ref}: b32 latency x{df.loc[ref, 'b32_ms'] / df.loc[ours, 'b32_ms']:.2f} faster, "
                  f"b1 x{df.loc[ref, 'b1_ms'] / df.loc[ours, 'b1_ms']:.2f}, "
                  f"size x{df.loc[ref, 'size_mb'] / df.loc[ours, 'size_mb']:.2f} smaller")
    best = df.loc["labkit int8 (onnxruntime)"]
    print(f"targets (labkit onnxruntime): whole model {best['size_x_vs_fp32']:.2f}x smaller (>= 3), "
          f"b32 {best['speedup_b32']:.2f}x faster (>= 1.5), accuracy {100 * (best['accuracy'] - fp['accuracy']):+.1f} "
          f"points (>= -1)")


def section_accuracy(base, tok, reference, labels, qat_steps: int) -> None:
    import pandas as pd


    def row(name, m):
        preds = measure.predictions(m, tok, "test")
        return {"model": name, "accuracy": (preds == labels).mean(), "agreement": measure.agreement(preds, reference)}

    rows = [row("fp32", base)]
    for bits, gran in [(8, "tensor"), (8, "channel"), (4, "channel"), (4, "group")]:
        rows.append(row(f"{bits}-bit {gran} weights (PTQ)", Q.fake_quantize(base, bits, granularity=gran)))
    t0 = time.perf_counter()
    qat = Q.qat(base, tok, bits=4, granularity="group", group_size=64, steps=qat_steps)
    rows.append(row(f"4-bit group-64 weights (QAT, {qat_steps} steps, {time.perf_counter() - t0:.0f} s)", qat))
    w8 = Q.fake_quantize(base, 8, "symmetric", "channel")
    calibration = data.split("val", limit=256)["text"]
    for bits in (8, 4):
        for obs in ("minmax", "percentile", "mse"):
            rows.append(row(f"W8 A{bits} static, {obs} observer", C.calibrate(w8, tok, calibration, bits, obs)))
    df = pd.DataFrame(rows).set_index("model")
    df["points_vs_fp32"] = 100 * (df["accuracy"] - df.loc["fp32", "accuracy"])
    print(f"\nSimulated quantization (accuracy only), test split of {len(labels)} snippets")
    print(df.to_string(float_format=lambda v: f"{v:.3f}"))


def main(argv: list[str] | None = None) -> int:
    """Print the quantization benchmark tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["all", "int8", "accuracy"], default="all")
    parser.add_argument("--qat-steps", type=int, default=150)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    base, tok = model.load_baseline()
    reference = measure.predictions(base, tok, "test")
    labels = data.split("test")["label"].to_numpy()
    print(f"baseline: LABKIT_FAST={os.environ.get('LABKIT_FAST', '0')}, test accuracy "
          f"{(reference == labels).mean():.4f} on {len(labels)} snippets")
    if args.section in ("all", "int8"):
        section_int8(base, tok, reference, labels)
    if args.section in ("all", "accuracy"):
        section_accuracy(base, tok, reference, labels, args.qat_steps)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
