"""labkit's int8 paths against runtimes labkit did not make, in one interleaved timing on the full baseline.

    .venv/bin/python benchmarks/bench_runtimes.py            # about 10 minutes on 2 cores (full baseline)
    .venv/bin/python benchmarks/bench_runtimes.py --no-prune # skip the structured + recover + OpenVINO candidate

torchao is measured only where it imports; it is kept out of the venv (installed, transformers imports it in every
process and prints load errors): pip install --no-deps --target /tmp/torchao-site torchao==0.18.0, then run with
PYTHONPATH=/tmp/torchao-site.

References (none of them uses labkit's own ONNX or int8 code): ONNX Runtime fp32 / int8 built only with
torch.onnx.export + ONNX Runtime's BERT optimizer + quantize_dynamic (documented defaults), OpenVINO f32,
OpenVINO with the precision it picks itself, OpenVINO + NNCF static int8 (calibrated on validation snippets),
and torchao's int8 (when installed). labkit's best is chosen among labkit's int8 paths on the VALIDATION
split (fastest whose validation accuracy is within 0.5 point of fp32's); the test split is reported once.
Target (issue 14): labkit's best int8 path within 1.1x of OpenVINO + NNCF int8 speed, accuracy within 0.5 point.

The latest results, with their machine and date: benchmarks/RESULTS.md#runtimes.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from labkit.core import data, machine, measure, model, parts
from labkit.pipelines import pipeline
from labkit.quant import quantize
from labkit.runtimes import onnx
from labkit.runtimes import openvino as runtimes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
LABKIT = ("labkit int8 (torch)", "labkit int8 (onnxruntime)", "labkit int8 (openvino)",
          "labkit structured + recover + openvino int8")


def _uptime() -> str:
    """The load average now (other processes on the machine change every timing)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _size(model) -> int:
    """Serialized bytes (measure.serialized_bytes), or torch.save's where safetensors cannot take the tensors."""
    try:
        return measure.serialized_bytes(model)
    except RuntimeError:  # tensor subclasses (torchao) have no plain storage for safetensors
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.getbuffer().nbytes


def build(base, tok, prune: bool) -> tuple[dict, dict]:
    """Every model to time, and notes (what each one is, what OpenVINO chose)."""
    models, notes = {"torch fp32": base}, {}
    steps = [
        ("labkit int8 (torch)", lambda: quantize.to_int8(base)),
        ("labkit int8 (onnxruntime)", lambda: onnx.to_onnx(base, optimize=False, int8=True)),
        ("labkit int8 (openvino)", lambda: runtimes.to_openvino(base, int8=True, tokenizer=tok)),
        ("ORT fp32 (reference)", lambda: runtimes.ort_reference(base)),
        ("ORT int8 (reference)", lambda: runtimes.ort_reference(base, int8=True)),
        ("OpenVINO f32", lambda: runtimes.to_openvino(base, "f32", tokenizer=tok)),
        ("OpenVINO default", lambda: runtimes.to_openvino(base, "default", tokenizer=tok)),
        ("OpenVINO + NNCF int8", lambda: runtimes.to_openvino(base, int8=True, tokenizer=tok, calibration="val")),
    ]
    if prune:
        pipe = pipeline.configurations()["structured + recover"] + [("int8", {"backend": "openvino"})]
        steps.append(("labkit structured + recover + openvino int8",
                      lambda: pipeline.run_pipeline(base, tok, pipe)))
    for name, make in steps:
        t0 = time.perf_counter()
        models[name] = make()
        precision = getattr(models[name], "inference_precision", "")
        notes[name] = f"built in {time.perf_counter() - t0:.0f} s" + (f", runs in {precision}" if precision else "")
        print(f"built {name}: {notes[name]}", flush=True)
    return models, notes


def choose_best(models: dict, tok, timing: dict, max_drop: float = 0.005) -> tuple[str, dict]:
    """labkit's best: the fastest labkit int8 path whose validation accuracy is within `max_drop` of fp32's."""
    labels = data.split("val")["label"].to_numpy()
    val = {n: float((measure.predictions(models[n], tok, "val") == labels).mean())
           for n in ("torch fp32",) + LABKIT if n in models}
    ok = [n for n in LABKIT if n in val and val[n] >= val["torch fp32"] - max_drop]
    best = min(ok or ["torch fp32"], key=lambda n: timing[n]["median_ms"])
    return best, val


def report(models: dict, notes: dict, tok, rounds: int) -> str:
    """Time everything interleaved, choose labkit's best on validation, report test accuracy once; the table text."""
    before = _uptime()
    timing = measure.compare_latency(models, tok, 32, warmup=3, repeats=rounds, texts=measure.latency_texts(32))
    after = _uptime()
    best, val = choose_best(models, tok, timing)
    labels = data.split("test")["label"].to_numpy()
    base_ms = timing["torch fp32"]["median_ms"]
    lines = [f"CPU: {machine.cpu_name()} ({machine.cpu_features()}); threads {torch.get_num_threads()}; batch 32 "
             f"real test snippets ({timing['torch fp32']['seq_len']} tokens padded); {rounds} interleaved rounds "
             f"after 3 warm-up; baseline: full (LABKIT_FAST={os.environ.get('LABKIT_FAST', '0')})",
             f"load before timing: {before}", f"load after timing:  {after}", "",
             "| model | median ms | min-max ms | x torch fp32 | test accuracy [95%] | val accuracy | MB | notes |",
             "|---|---|---|---|---|---|---|---|"]
    test = {}
    for name, m in models.items():
        ci = measure.accuracy_ci(measure.predictions(m, tok, "test"), labels)
        test[name] = ci
        t = timing[name]["times_ms"]
        lines.append(f"| {name}{' **(labkit best)**' if name == best else ''} | {np.median(t):.1f} | "
                     f"{min(t):.1f}-{max(t):.1f} | {base_ms / np.median(t):.2f} | {measure.format_accuracy(ci)} | "
                     f"{f'{val[name]:.4f}' if name in val else '-'} | {_size(m) / 1e6:.1f} | "
                     f"{notes.get(name, '')} |")
    refs = [n for n in models if not n.startswith("labkit") and n != "torch fp32"]
    fastest = min(refs, key=lambda n: timing[n]["median_ms"])
    nncf = "OpenVINO + NNCF int8"
    own = min([n for n in ("labkit int8 (torch)", "labkit int8 (onnxruntime)") if n in models],
              key=lambda n: timing[n]["median_ms"])

    def vs(a: str, b: str) -> str:
        points = 100 * (test[a]["accuracy"] - test[b]["accuracy"])
        return (f"{a}: {timing[a]['median_ms'] / timing[b]['median_ms']:.2f}x the time of {b} "
                f"(target <= 1.1x), {points:+.1f} points test accuracy (target within 0.5)")

    lines += ["", f"labkit's best (chosen on validation, within 0.5 point of fp32): {best}",
              f"fastest reference: {fastest}", vs(best, fastest)]
    lines += [] if fastest == nncf else [vs(best, nncf)]
    lines += ["labkit's own kernels (no OpenVINO): " + vs(own, nncf),
              "(labkit int8 (openvino) is NNCF's recipe itself, calibrated on train instead of validation snippets: "
              "the gap between those two rows is this machine's noise, not a difference in method)"]
    return "\n".join(lines)


def torchao_int8(base):
    """torchao's int8 dynamic-activation, int8-weight Linear (the successor of torch.ao's) on a copy of `base`."""
    import torchao
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    out = parts.clone(base).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(out, Int8DynamicActivationInt8WeightConfig())
    out.torchao_version = torchao.__version__
    return out


def torchao_line(base, int8_torch, tok, rounds: int = 10) -> str:
    """torchao's int8 (dynamic int8 activations, int8 weights) timed beside torch.ao's, in its own short run.

    Separate from the main table: eager torchao is several times slower on CPU and would stretch every round."""
    try:
        ao = torchao_int8(base)
    except ImportError:
        return "torchao: not installed, not measured"
    t = measure.compare_latency({"torch.ao": int8_torch, "torchao": ao}, tok, 32, warmup=3, repeats=rounds)
    a, b = t["torchao"]["times_ms"], t["torch.ao"]["times_ms"]
    ma, mb = t["torchao"]["median_ms"], t["torch.ao"]["median_ms"]
    return (f"torchao {ao.torchao_version} Int8DynamicActivationInt8WeightConfig: median {ma:.0f} ms "
            f"({min(a):.0f}-{max(a):.0f}) vs torch.ao int8 (labkit int8 (torch)) {mb:.0f} ms "
            f"({min(b):.0f}-{max(b):.0f}), {rounds} interleaved rounds: {ma / mb:.1f}x the time "
            "(eager, no torch.compile): "
            + ("slower than torch.ao here, so torchao is not a labkit dependency" if ma > mb else
               "not slower here: worth a look as torch.ao's replacement"))


def main(argv: list[str] | None = None) -> int:
    """Build, time, report; write benchmarks/results/runtimes.md when that folder exists."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (>= 5)")
    parser.add_argument("--no-prune", action="store_true", help="skip the structured + recover + OpenVINO candidate")
    parser.add_argument("--no-torchao", action="store_true", help="skip timing torchao's int8")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")

    start = time.perf_counter()
    base, tok = model.load_baseline(progress=False)
    models, notes = build(base, tok, prune=not args.no_prune)
    text = report(models, notes, tok, args.rounds)
    print("\n" + text, flush=True)
    if not args.no_torchao:
        text += "\n" + torchao_line(base, models["labkit int8 (torch)"], tok)
        print(text.splitlines()[-1])
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if RESULTS.is_dir():
        command = f"python benchmarks/bench_runtimes.py --rounds {args.rounds}"
        (RESULTS / "runtimes.md").write_text(f"    {command}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
