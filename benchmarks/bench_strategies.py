"""Combined pipelines against the fp32 baseline, measured side by side in one run.

    flock /tmp/labkit-cpu.lock .venv/bin/python benchmarks/bench_strategies.py [--steps N]

Every configuration of `pipeline.configurations()` is built from the cached baseline; latency is batch 32
(and 1) of real snippets with all models' runs interleaved; size is the serialized artifact; accuracy is the
test split. Target (issue): best combined configuration >= 2.5x batch-32 speed-up and >= 4x smaller with
<= 2 points accuracy loss. The best model is also exported to ONNX and timed in ONNX Runtime beside PyTorch.
"""

from __future__ import annotations

import argparse
import time

import torch

from labkit import fast_mode
from labkit.core import data, machine, measure, model, results
from labkit.pipelines import pareto, pipeline
from labkit.runtimes import onnx


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table, the Pareto front and the target check."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="recovery steps (default: prune.recover's)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    base, tok = model.load_baseline()
    configs = pipeline.configurations()
    if args.steps is not None:
        configs = {k: [(n, dict(o, steps=args.steps) if n == "recover" else o) for n, o in v] for k, v in configs.items()}
    print(f"baseline: {'fast (CI)' if fast_mode() else 'full'}; CPU: {machine.cpu_name()} ({machine.cpu_features()}), "
          f"threads: {torch.get_num_threads()}", flush=True)
    reference = measure.predictions(base, tok, "test")
    labels = data.split("test")["label"].to_numpy()
    models = {"fp32 baseline": base}
    for name, steps in configs.items():
        t0 = time.perf_counter()
        models[name] = pipeline.run_pipeline(base, tok, steps)
        print(f"built {name}: {pipeline.describe(steps)} in {time.perf_counter() - t0:.0f} s", flush=True)

    lat32 = measure.compare_latency(models, tok, 32, repeats=15)
    lat1 = measure.compare_latency(models, tok, 1, repeats=15)
    rows = []
    for name, m in models.items():
        preds = measure.predictions(m, tok, "test")
        rows.append(results.Result(name, float((preds == labels).mean()),
                                   measure.agreement(preds, reference), measure.serialized_bytes(m),
                                   lat1[name]["median_ms"], lat32[name]["median_ms"]))
    df = results.table(rows, baseline="fp32 baseline")
    df["pareto"] = pareto.pareto_front(df)
    df["loss_points"] = 100 * (df.loc[0, "accuracy"] - df["accuracy"])
    cols = ["name", "accuracy", "loss_points", "agreement", "size_mb", "size_ratio", "latency_b1_ms",
            "latency_b32_ms", "speedup_b32", "pareto"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    ok = df[(df["loss_points"] <= 2.0)]
    best = ok.sort_values("speedup_b32", ascending=False).iloc[0]
    print(f"\nbest within 2 points: {best['name']}: {best['speedup_b32']:.2f}x faster at batch 32 (target >= 2.5x), "
          f"{best['size_ratio']:.2f}x smaller (target >= 4x), {best['loss_points']:.2f} points lost")

    # ONNX Runtime beside PyTorch for the best float pipeline without hooks (ONNX cannot carry token pruning).
    # (Fusions are off: ONNX Runtime's BERT optimizer assumes every layer still has all its heads.)
    ort = onnx.to_onnx(models["structured + recover"], optimize=False, int8=True)
    side = measure.compare_latency({"pytorch int8": models["structured + recover + int8"], "onnxruntime int8": ort},
                                   tok, 32, repeats=15)
    ort_acc = measure.accuracy(ort, tok, "test")
    print(f"ONNX export of structured + recover + int8: ONNX Runtime {side['onnxruntime int8']['median_ms']:.1f} ms "
          f"vs PyTorch {side['pytorch int8']['median_ms']:.1f} ms at batch 32; ONNX accuracy {ort_acc:.3f}; "
          f"{measure.serialized_bytes(ort) / 1e6:.1f} MB")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
