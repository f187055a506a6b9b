"""Float precision on the cached baseline: fp32, bf16 and fp16 weights, and bf16 autocast, measured side by side.

    flock /tmp/labkit-cpu.lock .venv/bin/python benchmarks/bench_precision.py [--train-steps N]

Inference: fp32 weights, bf16 weights, fp16 weights (left out, with the reason, where this torch cannot run fp16
here) and fp32 weights run under bf16 autocast, timed interleaved run by run at batch 1 and 32 (median, min-max of
the runs, and the speed-up's min-max per round); test accuracy with its 95% interval and agreement with fp32;
bytes of the serialized weights. Training: one fine-tuning step (forward, loss, backward, clipping, AdamW, as
`train.fit` does) in fp32 and under bf16 autocast, timed interleaved. Target (issue 16): bf16 weights >= 1.5x
fp32's speed at batch 32, judged only where the CPU computes bf16 natively (`machine.native_float_support`);
elsewhere bf16 is emulated and the numbers are printed without a verdict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

from labkit import fast_mode
from labkit.core import data, machine, measure, model, parts, train
from labkit.quant import floats as precision

TARGET_B32 = 1.5  # bf16 weights vs fp32 at batch 32, on a CPU with native bf16


class Autocast(nn.Module):
    """fp32 weights whose forward runs under `train.autocast` (matmuls in bf16, weights untouched)."""
    def __init__(self, model: nn.Module, precision: str = "bf16"):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, **inputs):
        with train.autocast(self.model, self.precision):
            return self.model(**parts.feed(self.model, inputs))


def candidates(base: nn.Module) -> tuple[dict[str, nn.Module], list[str]]:
    """The models to compare, and a note for each precision this device cannot run."""
    models, skipped = {"fp32 weights": base}, []
    for name in ("bf16", "fp16"):
        try:
            models[f"{name} weights"] = precision.to_precision(base, name)
        except ValueError as err:  # fp16 where torch has no kernels for it here
            skipped.append(f"{name} weights: not run ({err})")
    models["bf16 autocast (fp32 weights)"] = Autocast(base, "bf16")
    return models, skipped


def _spread(times: list[float]) -> str:
    return f"{statistics.median(times):.1f} ({min(times):.1f}-{max(times):.1f})"


def inference_table(models: dict[str, nn.Module], tok, labels, reference) -> dict[str, dict]:
    """Print the markdown table of accuracy, size and interleaved latency; return the batch-32 speed-ups."""
    lat = {b: measure.compare_latency(models, tok, b) for b in (1, 32)}
    speed = measure.speedups(lat[32], "fp32 weights")
    first = lat[32]["fp32 weights"]
    print(f"\nInference: {first['threads']} threads, batch 32 = {first['seq_len']} tokens padded; latency is the "
          f"median (min-max) of {first['repeats']} runs after {first['warmup']} warm-up, all models interleaved")
    print("\n| weights | test accuracy [95%] | agreement with fp32 | MB | batch 1 ms | batch 32 ms "
          "| speed-up b32 [min-max per round] |")
    print("|---|---|---|---|---|---|---|")
    for name, m in models.items():
        preds = measure.predictions(m, tok, "test")
        acc = measure.format_accuracy(measure.accuracy_ci(preds, labels))
        s = speed[name]
        print(f"| {name} | {acc} | {measure.agreement(preds, reference):.3f} | "
              f"{measure.serialized_bytes(m) / 1e6:.1f} | {_spread(lat[1][name]['times_ms'])} | "
              f"{_spread(lat[32][name]['times_ms'])} | {s['speedup']:.2f}x {measure.format_range(s['lo'], s['hi'])} |",
              flush=True)
    return speed


def training_table(base: nn.Module, tok, steps: int, batch_size: int) -> None:
    """Print fine-tuning step times, fp32 vs bf16 autocast, interleaved step by step (`precision.training_speed`)."""
    speed = precision.training_speed(base, tok, steps=steps, warmup=1, batch_size=batch_size)
    print(f"\nFine-tuning step (`train.fit_steps`: forward, loss, backward, clipping, AdamW): batch {batch_size}, "
          f"median of {steps} steps after 1 warm-up, fp32 and bf16 autocast in turn")
    print("\n| training | step ms | speed-up vs fp32 [min-max per round] |")
    print("|---|---|---|")
    for r in speed.to_dict("records"):
        name = "fp32" if r["precision"] == "fp32" else f"{r['precision']} autocast (fp32 master weights)"
        print(f"| {name} | {r['step_ms']:.1f} | {r['speedup']:.2f}x "
              f"{measure.format_range(r['speedup_lo'], r['speedup_hi'])} |")


def main(argv: list[str] | None = None) -> int:
    """Print the precision benchmark tables and, on a CPU with native bf16, the target's verdict."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 3 fast, 10)")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch size (train.fit's default)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    base, tok = model.load_baseline()
    labels = data.split("test")["label"].to_numpy()
    reference = measure.predictions(base, tok, "test")
    print(f"baseline: LABKIT_FAST={os.environ.get('LABKIT_FAST', '0')}, {len(labels)} test snippets; torch "
          f"{torch.__version__}; CPU: {machine.cpu_name()} ({machine.cpu_features()}); {torch.get_num_threads()} threads")
    models, skipped = candidates(base)
    for line in skipped:
        print(line)
    speed = inference_table(models, tok, labels, reference)
    training_table(base, tok, args.train_steps or (3 if fast_mode() else 10), args.train_batch)

    got = speed["bf16 weights"]["speedup"]
    native = precision.is_native("bf16", base)
    if native:
        verdict = "PASS" if got >= TARGET_B32 else "FAIL"
        print(f"\ntarget: bf16 weights >= {TARGET_B32}x fp32 at batch 32 where bf16 is native: {got:.2f}x {verdict}")
    else:
        print(f"\ntarget (bf16 weights >= {TARGET_B32}x fp32 at batch 32) not judged: "
              f"{'this CPU has no native bf16 (torch emulates it)' if native is False else 'native bf16 unknown here'}"
              f", measured {got:.2f}x")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
