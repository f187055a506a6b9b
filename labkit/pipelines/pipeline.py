"""Named pipelines of the saved techniques, for the tour, the benchmarks and the family matrix.

A notebook composes the techniques as plain functions (`int8(shrink(model))`); the tour needs the same pipelines
as data it can print, check and rebuild: a list of `(step, options)` pairs.
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from labkit import fast_mode
from labkit.core import parts, results
from labkit.dynamic import tokens
from labkit.prune import prune
from labkit.quant import floats, quantize
from labkit.runtimes import onnx, openvino

STEPS = ("structured", "recover", "magnitude", "token_pruning", "int8", "precision")
BACKENDS = ("torch", "onnxruntime", "openvino")
# Steps that need float nn.Linear layers (they prune, train or score with them): impossible after int8.
_NEEDS_FLOAT = {"structured", "recover", "magnitude", "token_pruning"}
# Steps that need fp32 weights: training keeps an fp32 master copy, and int8 is an alternative to a bf16/fp16 cast.
_NEEDS_FP32 = {"recover", "int8"}


def validate(steps: list[tuple[str, dict]]) -> None:
    """Refuse unknown steps and orders that cannot work (e.g. pruning after int8 conversion)."""
    seen: list[str] = []
    for item in steps:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
            raise ValueError(f"Each step is a (name, options) pair such as ('int8', {{}}), got {item!r}.")
        name, options = item
        if name not in STEPS:
            raise ValueError(f"Unknown step {name!r}; choose from {', '.join(STEPS)}.")
        if name in _NEEDS_FLOAT and "int8" in seen:
            raise ValueError(f"'{name}' cannot follow 'int8': int8 layers have no float weights to prune or train. "
                             f"Put '{name}' before 'int8'.")
        if name in seen and name != "recover":
            raise ValueError(f"'{name}' appears twice; apply it once with the combined setting.")
        if name in _NEEDS_FP32 and "precision" in seen:
            raise ValueError(f"'{name}' cannot follow 'precision': it needs fp32 weights. Put the precision step "
                             "last (e.g. structured -> recover -> precision); int8 and bf16/fp16 are alternatives.")
        if name == "precision" and "int8" in seen:
            raise ValueError("'precision' cannot follow 'int8': int8 layers have no float weights to cast. Choose "
                             "one of the two as the last step.")
        backend = options.get("backend", "torch") if name == "int8" else "torch"
        if backend not in BACKENDS:
            raise ValueError(f"Unknown int8 backend {backend!r}; choose from {', '.join(BACKENDS)}.")
        if backend != "torch" and "token_pruning" in seen:
            raise ValueError("Token pruning runs as PyTorch hooks, which an ONNX or OpenVINO export does not carry; "
                             "use int8 with backend='torch' after token pruning.")
        seen.append(name)


def check(model: nn.Module, steps: list[tuple[str, dict]]) -> None:
    """`validate`, then refuse (ValueError) steps this model cannot take, before anything is copied or trained:
    structured pruning of a family whose heads cannot be cut out, token pruning from a layer it does not have."""
    validate(steps)
    for name, options in steps:
        if name == "structured":
            prune.structured_blocks(model)
        elif name == "token_pruning" and "start_layer" in options:
            tokens.check_prunable(model, options["start_layer"])


def _int8(model: nn.Module, backend: str = "torch") -> nn.Module:
    """int8 in place with torch's kernels, or a new ONNX Runtime / OpenVINO (NNCF) model built from `model`."""
    if backend == "onnxruntime":
        return onnx.to_onnx(model, optimize=False, int8=True)
    if backend == "openvino":
        return openvino.to_openvino(model, int8=True)
    return quantize.to_int8(model, inplace=True)


def run_pipeline(model: nn.Module, tokenizer, steps: list[tuple[str, dict]]) -> nn.Module:
    """Apply the steps in order to an independent copy of `model` and return it: no tensor is shared with `model`."""
    check(model, steps)
    out = parts.clone(model)
    for name, options in steps:
        options = dict(options)  # the caller's options stay as they were
        if name == "structured":
            out = prune.structured(out, inplace=True, **options)
        elif name == "recover":
            if options.pop("distill", False):  # learn from the untouched input model's outputs too
                options["teacher"] = model
            out = prune.recover(out, tokenizer, inplace=True, **options)
        elif name == "magnitude":
            out = prune.magnitude(out, inplace=True, **options)
        elif name == "token_pruning":
            out = tokens.token_pruning(out, inplace=True, **options)
        elif name == "int8":
            out = _int8(out, **options)
        else:
            out = floats.to_precision(out, inplace=True, **options)
    return out


def describe(steps: list[tuple[str, dict]]) -> str:
    """A short human-readable name for a pipeline."""
    names = []
    for name, opt in steps:
        args = ",".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in opt.items())
        names.append(f"{name}({args})" if args else name)
    return " -> ".join(names) or "fp32 baseline"


def configurations(model: nn.Module | None = None) -> dict[str, list[tuple[str, dict]]]:
    """The pipelines the tour and the benchmarks compare; for `model`, token pruning starts at a layer it has."""
    small = ("structured", {"heads": 1 / 3, "ffn": 0.7})  # 8 of 12 heads and 30% of the FFN neurons kept
    recover = ("recover", {})  # prune.recover's default steps: fewer in fast mode
    start = 2 if model is None else tokens.start_layer_for(model)  # layer 2, or the last of a shallower model
    token = ("token_pruning", {"keep_ratio": 0.5, "start_layer": start})
    bf16 = ("precision", {"precision": "bf16"})  # the alternative last step to int8: half the bytes, float kernels
    configs = {
        "int8": [("int8", {})],
        "bf16": [bf16],
        "token pruning": [token],
        "structured + recover": [small, recover],
        "structured + recover + int8": [small, recover, ("int8", {})],
        "structured + recover + bf16": [small, recover, bf16],
        "token pruning + int8": [token, ("int8", {})],
        "token pruning + bf16": [token, bf16],
        "structured + recover + token + int8": [small, recover, token, ("int8", {})],
        # Milder cut (half the FFN neurons kept), a longer fine-tune that distils the baseline, then int8.
        "mild structured + distill + int8": [("structured", {"heads": 1 / 3, "ffn": 0.5}),
                                             ("recover", {"distill": True, "steps": 20 if fast_mode() else 600}),
                                             ("int8", {})],
    }
    if openvino.available():  # the same pruned model, then OpenVINO's static int8 (NNCF) instead of torch's
        configs[OPENVINO_PIPELINE] = [small, recover, ("int8", {"backend": "openvino"})]
    return configs


OPENVINO_PIPELINE = "structured + recover + openvino int8"  # defined only where OpenVINO is installed
TOUR_PIPELINES = ("structured + recover + int8", "structured + recover + token + int8",
                  "mild structured + distill + int8", OPENVINO_PIPELINE)


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None,
         keep: tuple[str, ...] = TOUR_PIPELINES) -> list[results.Result]:
    """Rows for `python -m labkit tour`: the combined pipelines that single techniques do not cover, timed
    interleaved beside `model`. `limit` (test snippets) and `keep` (pipelines) shrink the work for tests only.

    A pipeline this model cannot take (see `check`), or one through OpenVINO where it is not installed, is skipped
    with the reason (`results.skip_row`), before it is built; token pruning starts at layer 2, or at the last layer
    of a shallower model."""
    configs = configurations(model)
    if OPENVINO_PIPELINE in keep and OPENVINO_PIPELINE not in configs:
        results.skip_row(f"combined: {OPENVINO_PIPELINE}", f"OpenVINO and NNCF are not installed; they are optional: "
                                                           f"{openvino.INSTALL}")
        keep = tuple(k for k in keep if k != OPENVINO_PIPELINE)
    unknown = [k for k in keep if k not in configs]
    if unknown:
        raise ValueError(f"No pipeline named {', '.join(map(repr, unknown))}; keep= names some of {', '.join(configs)}.")
    configs = {k: v for k, v in configs.items() if k in keep}
    models, notes = {}, {}
    for name, steps in configs.items():
        t0 = time.perf_counter()
        try:
            models[f"combined: {name}"] = run_pipeline(model, tokenizer, steps)
        except ValueError as err:  # a refusal names what this model lacks; the other pipelines still run
            results.skip_row(f"combined: {name}", str(err))
            continue
        notes[f"combined: {name}"] = f"{describe(steps)} (built in {time.perf_counter() - t0:.0f} s)"
    if not models:
        return []
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
