"""Every technique and the notebooks' key steps on a CUDA GPU, as one prepared script (at most about 10 minutes).

    .venv/bin/python benchmarks/gpu_check.py            # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --fast     # smaller sample, same code path

What it runs, and prints as it goes:
1. the family x technique matrix with the tiny models on CUDA; a CPU-only backend (torch's int8 kernels,
   ONNX Runtime's CPU provider) must hand back a CPU model and say so;
2. the kit's baseline on CUDA: accuracy of fp32 and fp16 on validation snippets, and the inputs of every
   calibrating or training function on the model's device (calibrate.calibrate, quantize.qat,
   prune.recover, gradual.prune_finetune, sparse.to_sparse);
3. latency on CUDA (synchronized, interleaved) for fp32, fp16 and bf16 at batch 32;
4. 2:4 sparsity against dense fp16 on the same GPU (torch.sparse.to_sparse_semi_structured, compute capability
   >= 8.0), on the baseline's FFN-sized matmul and on the whole model.
Without a GPU it says so and exits 0 having run nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from labkit.core import assets, data, measure, model, parts
from labkit.dynamic import gradual
from labkit.pipelines import matrix
from labkit.prune import prune
from labkit.quant import calibrate, quantize
from labkit.sparse import sparse

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _say(*args) -> None:
    print(*args, flush=True)


def matrix_on_cuda() -> None:

    tok = assets.load_tokenizer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cells = matrix.run_all(tok, device="cuda")
    for c in cells:
        _say(f"  {c.family:11s} {c.technique:24s} {c.status:8s} {c.effect}")
    cpu_notes = sorted({str(w.message)[:100] for w in caught if "CPU" in str(w.message)})
    _say("  CPU-only warnings seen:", *cpu_notes, sep="\n    ")


def baseline_on_cuda(limit: int) -> None:
    import torch


    m, tok = model.load_baseline(device="cuda", progress=False)
    _say(f"  baseline on {parts.device_of(m)}")
    acc = measure.accuracy(m, tok, "val", limit)
    half = parts.clone(m).half()
    _say(f"  val accuracy on {limit}: fp32 {acc:.3f}, fp16 {measure.accuracy(half, tok, 'val', limit):.3f}")

    texts = list(data.split("val", 64)["text"])
    steps = {"calibrate.calibrate": lambda: calibrate.calibrate(m, tok, texts, 8),
             "quantize.qat (2 steps)": lambda: quantize.qat(m, tok, steps=2, batch_size=8),
             "prune.recover (2 steps)": lambda: prune.recover(prune.magnitude(m, 0.5), tok, steps=2),
             "gradual.prune_finetune (2 steps)": lambda: gradual.prune_finetune(m, tok, 0.5, steps=2),
             "sparse.to_sparse": lambda: sparse.to_sparse(m, 0.9)}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        try:
            out = fn()
            out = out[0] if isinstance(out, tuple) else out
            where = next((p.device for p in out.parameters()), "no parameters") if hasattr(out, "parameters") else "-"
            _say(f"  {name}: ok in {time.perf_counter() - t0:.1f} s, result on {where}")
        except Exception as err:  # report and go on: the script's job is to show every step
            _say(f"  {name}: FAILED {type(err).__name__}: {err}")
    models = {"fp32": m, "fp16": half, "bf16": parts.clone(m).to(torch.bfloat16)}
    lat = measure.compare_latency(models, tok, 32)
    for name, rec in lat.items():
        _say(f"  batch 32 {name}: median {rec['median_ms']:.2f} ms, p90 {rec['p90_ms']:.2f} ms on {rec['device']}")


def two_four_vs_dense() -> None:
    import torch


    if torch.cuda.get_device_capability()[0] < 8:
        _say("  this GPU has no sparse tensor cores (compute capability < 8.0): 2:4 not timed")
        return
    from torch.sparse import to_sparse_semi_structured

    x = torch.randn(4096, 384, device="cuda", dtype=torch.float16)
    w = prune.two_four(torch.nn.Sequential(torch.nn.Linear(384, 1536))).half().cuda()[0].weight.detach()
    sw = to_sparse_semi_structured(w)
    for name, fn in (("dense fp16", lambda: torch.nn.functional.linear(x, w)),
                     ("2:4 fp16", lambda: torch.nn.functional.linear(x, sw))):
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        _say(f"  4096x384 @ 384x1536 {name}: {(time.perf_counter() - t0) / 200 * 1e6:.1f} us")

    m, tok = model.load_baseline(device="cuda", progress=False)
    dense = parts.clone(m).half()
    sparse24 = prune.two_four(m).half()
    for layer in parts.linears(sparse24, "blocks").values():  # torch packs each 2:4 weight for the sparse tensor cores
        layer.weight = torch.nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)
    lat = measure.compare_latency({"dense fp16": dense, "2:4 fp16": sparse24}, tok, 32)
    for name, rec in lat.items():
        _say(f"  whole model, batch 32, {name}: median {rec['median_ms']:.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="a smaller sample (same code path)")
    args = ap.parse_args()
    if args.fast:
        os.environ["LABKIT_FAST"] = "1"
    import torch

    if not torch.cuda.is_available():
        _say("No CUDA GPU is visible here: nothing was run.")
        return 0
    _say(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    start = time.perf_counter()
    for title, fn in (("1. family x technique matrix on CUDA", matrix_on_cuda),
                      ("2. the baseline's steps on CUDA", lambda: baseline_on_cuda(200 if args.fast else 1000)),
                      ("3. 2:4 against dense fp16", two_four_vs_dense)):
        _say(title)
        fn()
        _say(f"  ({time.perf_counter() - start:.0f} s so far)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
