"""Dynamic lab targets, measured side by side in one run on the cached baseline.

    python benchmarks/bench_dynamic.py [--part tokens|int8|gradual|all] [--steps N] [--no-distill] [--lr LR]

- token pruning, keep 50% from layer 2: >= 1.3x faster at batch 32, <= 2 points accuracy loss; batch 1 shown too;
- dynamic int8 (real, torch): accuracy within 1 point of fp32;
- gradual (cubic) pruning to 70% while fine-tuning: within 2 points of the baseline, better than one-shot + same steps
  (full default: 600 steps of batch 16 at lr 1e-4, distilling the dense model; about 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from labkit import fast_mode
from labkit.core import data, machine, measure, model
from labkit.dynamic import gradual, tokens
from labkit.quant import int8 as quant_int8


def _acc(m, tok, df) -> float:
    return float((measure.predict(m, tok, df["text"]) == df["label"].to_numpy()).mean())


def token_table(base, tok, test) -> pd.DataFrame:
    """Token pruning 50% from layer 2 (two scores) against fp32: accuracy, latency at batch 32 and 1."""
    models = {"fp32": base, "keep 0.5 from L2 ([CLS] score)": tokens.token_pruning(base, 0.5, 2),
              "keep 0.5 from L2 (mean score)": tokens.token_pruning(base, 0.5, 2, score="mean")}
    lat32 = measure.compare_latency(models, tok, 32)
    lat1 = measure.compare_latency(models, tok, 1)
    rows = []
    for name, m in models.items():
        rows.append({"model": name, "accuracy": _acc(m, tok, test), "b32_ms": lat32[name]["median_ms"],
                     "b1_ms": lat1[name]["median_ms"], "b32_tokens": lat32[name]["seq_len"],
                     "b1_tokens": lat1[name]["seq_len"]})
    df = pd.DataFrame(rows)
    df["loss_pts"] = 100 * (df["accuracy"].iloc[0] - df["accuracy"])
    df["speedup_b32"] = df["b32_ms"].iloc[0] / df["b32_ms"]
    df["speedup_b1"] = df["b1_ms"].iloc[0] / df["b1_ms"]
    return df


def lengths(base, tok) -> pd.DataFrame:
    """Where shorter sequences pay: the unpruned model at batch 1 and 32 on 13, 26 and 52 tokens."""
    return tokens.length_latency(base, tok, batch_sizes=(1, 32))


def int8_table(base, tok, test) -> pd.DataFrame:
    """Real dynamic int8 against fp32: accuracy and latency."""
    q = quant_int8.dynamic_int8(base, "blocks")  # the blocks' Linears, as notebook 04; the head stays float
    lat = measure.compare_latency({"fp32": base, "dynamic int8": q}, tok, 32)
    rows = [{"model": n, "accuracy": _acc(m, tok, test), "b32_ms": lat[n]["median_ms"]}
            for n, m in {"fp32": base, "dynamic int8": q}.items()]
    df = pd.DataFrame(rows)
    df["loss_pts"] = 100 * (df["accuracy"].iloc[0] - df["accuracy"])
    df["speedup_b32"] = df["b32_ms"].iloc[0] / df["b32_ms"]
    return df


def gradual_table(base, tok, test, steps: int, distill: bool = False, lr: float = 5e-5) -> pd.DataFrame:
    """Gradual (cubic) vs one-shot magnitude pruning to 70%, the same fine-tune steps and batches."""
    rows = [{"model": "fp32 baseline", "accuracy": _acc(base, tok, test), "sparsity": 0.0, "seconds": 0.0}]
    how = "distilled" if distill else "steps"
    for schedule in ("cubic", "oneshot"):
        t0 = time.perf_counter()
        pruned, _ = gradual.prune_finetune(base, tok, 0.7, steps, schedule=schedule, lr=lr,
                                           teacher=base if distill else None)
        rows.append({"model": f"{schedule} 70% + {steps} {how}", "accuracy": _acc(pruned, tok, test),
                     "sparsity": gradual.weight_sparsity(pruned), "seconds": time.perf_counter() - t0})
    df = pd.DataFrame(rows)
    df["loss_pts"] = 100 * (df["accuracy"].iloc[0] - df["accuracy"])
    return df


def main() -> None:
    """Run the chosen parts and print their tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["tokens", "int8", "gradual", "all"], default="all")
    parser.add_argument("--steps", type=int, default=20 if fast_mode() else 600)
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                        help="gradual part: half the loss distils the dense model (--no-distill: labels only)")
    parser.add_argument("--lr", type=float, default=1e-4, help="gradual part: learning rate")
    args = parser.parse_args()
    base, tok = model.load_baseline(progress=False)
    test = data.split("test")
    print(f"CPU: {machine.cpu_name()} ({machine.cpu_features()}), threads: {torch.get_num_threads()}, "
          f"fast mode: {fast_mode()}, test snippets: {len(test)}")
    fmt = dict(index=False, float_format=lambda v: f"{v:.3f}")
    if args.part in ("tokens", "all"):
        print("\n## token pruning (target: keep 0.5 from L2 >= 1.3x at b32, <= 2 pts)\n")
        print(token_table(base, tok, test).to_string(**fmt))
        print("\n## sequence length vs latency, unpruned model\n")
        print(lengths(base, tok).to_string(**fmt))
    if args.part in ("int8", "all"):
        print("\n## dynamic int8 (target: within 1 pt of fp32)\n")
        print(int8_table(base, tok, test).to_string(**fmt))
    if args.part in ("gradual", "all"):
        print(f"\n## gradual vs one-shot pruning to 70% ({args.steps} steps, batch 16, lr {args.lr:g}, "
              f"cubic ramp over 70% of them{', distilled' if args.distill else ''})\n")
        print(gradual_table(base, tok, test, args.steps, args.distill, args.lr).to_string(**fmt))


if __name__ == "__main__":
    main()
