"""BBC News (5 classes): the TF-IDF floor, the fine-tuned MiniLM in fp32, int8, and structured pruning + recovery.

    env -u LABKIT_FAST .venv/bin/python benchmarks/bench_bbc.py      # full size: about 15 minutes on 2 cores
    LABKIT_FAST=1 .venv/bin/python benchmarks/bench_bbc.py           # the CI-sized baseline, same code path

The classifier is fine-tuned once on the training split (cached like the review baseline), settings come from
the kit's defaults (nothing is chosen on the test split), and the test split (225 articles) is reported once:
accuracy with its 95% interval, bytes of the serialized weights, and batch-32 latency of the compressed rows
timed interleaved with fp32. An article is cut to its first 128 word pieces for the transformer; the floor
reads the whole article.

The latest results, with their machine and date: benchmarks/RESULTS.md#bbc-news.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import torch

from labkit.core import data, floor, machine, measure, model, results
from labkit.prune import prune
from labkit.quant import quantize

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    t0 = time.perf_counter()
    data.use("bbc")
    td = data.active()
    print(f"data: {td!r}")
    print(f"machine: {machine.cpu_name()} ({machine.cpu_features()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, Python {platform.python_version()}, fast={os.environ.get('LABKIT_FAST', '0')}")
    low = floor.tfidf_logreg(td)
    print("floor:", floor.describe(low))
    base, tok = model.load_baseline()
    print(f"baseline ready after {time.perf_counter() - t0:.0f} s: {model.baseline_record()['steps']} steps")
    ref = measure.predictions(base, tok, "test")
    small = prune.recover(prune.structured(base, heads=1 / 3, ffn=0.5), tok, teacher=base)
    rows = results.evaluate_group({"fp32 (fine-tuned MiniLM)": base, "int8 (torch, labkit)": quantize.to_int8(base),
                                   "structured 1/3 heads, 1/2 FFN + recover": small}, tok, ref, base)
    labels = td.split("test")["label"].to_numpy()
    ci = measure.accuracy_ci(low["predictions"], labels)
    print()
    print(f"| row | test accuracy [95%], n = {len(labels)} | MB | batch-32 ms | x fp32 [min, max] |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| TF-IDF + logistic regression (C={low['C']}) | {ci['accuracy']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] "
          f"| | | |")
    for r in rows:
        print(f"| {r.name} | {r.accuracy:.3f} [{r.accuracy_lo:.3f}, {r.accuracy_hi:.3f}] | {r.size_mb:.1f} | "
              f"{r.latency_b32_ms:.1f} | {r.speedup_b32:.2f} {measure.format_range(r.speedup_b32_lo, r.speedup_b32_hi)}"
              f" |")
    print(f"\n{rows[0].rounds} interleaved rounds on {rows[0].device}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
