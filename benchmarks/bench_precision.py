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


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, batch, precision_name: str) -> float:
    """One step as train.fit takes it: forward and loss under autocast, backward, clip, AdamW; returns ms."""
    t0 = time.perf_counter()
    with train.autocast(model, precision_name):
        loss = model(**parts.feed(model, batch.inputs), labels=batch.labels).loss
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) * 1000


def training_table(base: nn.Module, tok, steps: int, batch_size: int) -> None:
    """Print fine-tuning step times, fp32 vs bf16 autocast, on the same train batch, interleaved step by step."""
    split = data.split("train")
    batch = next(data.batches(split["text"], split["label"], tok, batch_size, shuffle_seed=0)).to(parts.device_of(base))
    runs = {}
    for name in ("fp32", "bf16"):
        m = parts.clone(base).train()
        runs[name] = (m, torch.optim.AdamW(m.parameters(), lr=1e-5), [])
    for i in range(1 + steps):  # step 0 warms up (and allocates AdamW's state): not counted
        for name, (m, opt, times) in runs.items():
            ms = _train_step(m, opt, batch, name)
            if i:
                times.append(ms)
    fp32 = runs["fp32"][2]
    ratios = [a / b for a, b in zip(fp32, runs["bf16"][2])]
    print(f"\nFine-tuning step: batch {batch_size} x {batch.inputs['input_ids'].shape[1]} tokens, median (min-max) of "
          f"{steps} steps after 1 warm-up, fp32 and bf16 autocast interleaved step by step")
    print("\n| training | step ms | speed-up vs fp32 [min-max per step] |")
    print("|---|---|---|")
    print(f"| fp32 | {_spread(fp32)} | 1.00x |")
    print(f"| bf16 autocast (fp32 master weights) | {_spread(runs['bf16'][2])} | "
          f"{statistics.median(fp32) / statistics.median(runs['bf16'][2]):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}] |")


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
    native = native_bf16(base)
    if native:
        verdict = "PASS" if got >= TARGET_B32 else "FAIL"
        print(f"\ntarget: bf16 weights >= {TARGET_B32}x fp32 at batch 32 where bf16 is native: {got:.2f}x {verdict}")
    else:
        print(f"\ntarget (bf16 weights >= {TARGET_B32}x fp32 at batch 32) not judged: "
              f"{'this CPU has no native bf16 (torch emulates it)' if native is False else 'native bf16 unknown here'}"
              f", measured {got:.2f}x")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


def native_bf16(model: nn.Module) -> bool | None:
    """Whether the device `model` runs on computes bf16 in hardware (None where the CPU flags cannot be read)."""
    dev = parts.device_of(model)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return machine.native_float_support().get("bf16") if dev.type == "cpu" else None


if __name__ == "__main__":
    sys.exit(main())
