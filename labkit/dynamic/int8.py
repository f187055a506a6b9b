"""Dynamic int8: int8 weights ahead of time, each batch's activation scale decided at run time (notebook 04),
against static (calibrated) scales, and how each holds up on inputs unlike the calibration set.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit.core import data, measure, memory, parts, results
from labkit.dynamic import tokens
from labkit.quant import quantize


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear inside the transformer blocks, named within the block list ('0.attention.self.query').

    The blocks' layers of `parts.linears(model, "blocks")`; the classifier head and pooler stay in float.
    """
    start = len(tokens.encoder_layers_name(model)) + 1
    return {name[start:]: m for name, m in parts.linears(model, "blocks").items()}


def dynamic_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Real dynamic int8: int8 weights ahead of time, each batch's activation scale computed at run time (CPU)."""
    tokens.checked_blocks(model)  # a supported classifier, or a ValueError naming the families
    layers = list(parts.linears(model, "blocks"))  # full names, the same in the copy
    model = parts.cpu_target(model, inplace, "torch's dynamic int8 Linear (torch.ao)")
    quantize_dynamic = quantize.torch_ao_quantize_dynamic()
    if quantize_dynamic is None:  # a torch without torch.ao: the same recipe in ONNX Runtime, with a warning
        return quantize.torch_dynamic_int8(model)
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated but still the CPU's int8 Linear; the warning is for us, not learners.
        warnings.simplefilter("ignore")
        quantize_dynamic(model, set(layers), dtype=torch.qint8, inplace=True)  # these layers only, by full name
    return model


# linear_fn(x (rows, in) float, w_codes (out, in) int8, w_scale (out,) float, bias (out,) float or None) -> (rows, out)
LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 codes of a Linear weight (out, in) and their float scales (out,)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("int8_weight needs a Linear's 2-D weight tensor of shape (out_features, in_features).")
    w = weight.detach().float()
    # One scale per output channel: a row with small weights keeps its own fine grid. Codes stop at -127 so the
    # grid is symmetric around 0 (what torch's int8 weights do too).
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    codes = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return codes, scale


class FnLinear(nn.Module):
    """A Linear on int8 weights whose forward is `linear_fn(x, w_codes, w_scale, bias)` (float in, float out)."""
    def __init__(self, linear: nn.Linear, linear_fn: LinearFn):
        super().__init__()
        codes, scale = int8_weight(linear.weight)
        self.register_buffer("w_codes", codes)
        self.register_buffer("w_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features, self.linear_fn = linear.in_features, linear.out_features, linear_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        y = self.linear_fn(rows, self.w_codes, self.w_scale, self.bias)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (rows.shape[0], self.out_features):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"linear_fn must return a float tensor of shape (rows, out_features) = "
                             f"({rows.shape[0]}, {self.out_features}), got {got}; check it with "
                             "checks.check('04.dynamic_linear', fn) first.")
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, " \
               f"fn={getattr(self.linear_fn, '__name__', 'linear_fn')}"


def with_linear(model: nn.Module, linear_fn: LinearFn, inplace: bool = False) -> nn.Module:
    """A copy of `model` whose encoder Linears run `linear_fn` on int8 weights (notebook 04's `dynamic_linear`).

    Each Linear's weight becomes symmetric per-channel int8 codes and scales (`int8_weight`); every forward pass
    calls `linear_fn(x, w_codes, w_scale, bias)` with the layer's input flattened to (rows, in_features).
    The classifier head and pooler stay in float, as in `dynamic_int8`. This runs at Python speed: it shows
    that your arithmetic gives the model's answers, not that it is fast (torch's int8 kernel is what is timed).
    """
    if not callable(linear_fn):
        raise ValueError(f"linear_fn must be a function (x, w_codes, w_scale, bias) -> y, got {linear_fn!r}.")
    model = (model if inplace else parts.clone(model))
    for name, lin in parts.linears(model, "blocks").items():
        parts.set_module(model, name, FnLinear(lin, linear_fn))
    return model


def _torch_dynamic_linear(linear: nn.Linear) -> nn.Module:
    """torch's own dynamic int8 Linear made from a float one (a copy)."""
    quantize_dynamic = quantize.torch_ao_quantize_dynamic()
    if quantize_dynamic is None:
        raise RuntimeError(f"torch {torch.__version__} has no torch.ao.quantization, whose int8 Linear this compares "
                           "against; run this comparison with torch 2.x up to 2.13, or skip it.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice is for us, not learners
        return quantize_dynamic(nn.Sequential(copy.deepcopy(linear).float().cpu()), {nn.Linear},
                                dtype=torch.qint8)[0]


@torch.inference_mode()
def linear_errors(model: nn.Module, tokenizer, linear_fn: LinearFn, texts: list[str], name: str | None = None
                  ) -> pd.DataFrame:
    """On one encoder Linear's real input: how far `linear_fn` and torch's dynamic int8 Linear land from float.

    The error is relative, ||y - y_float|| / ||y_float||, over every row of the captured input (all tokens of
    `texts`). `name` is a key of `linears(model)`; the first encoder Linear by default.
    """
    lins = linears(model)
    if name is None:
        name = next(iter(lins))
    if name not in lins:
        raise ValueError(f"No encoder Linear named {name!r}; choose one of {', '.join(list(lins)[:6])}, ...")
    lin = lins[name]
    seen: list[torch.Tensor] = []
    handle = lin.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        measure.predict(model, tokenizer, list(texts))
    finally:
        handle.remove()
    x = torch.cat([t.reshape(-1, lin.in_features) for t in seen]).float().cpu()
    w = lin.weight
    ref = (lin if w.device.type == "cpu" and w.dtype == torch.float32 else copy.deepcopy(lin).float().cpu())(x)
    codes, scale = int8_weight(lin.weight.cpu())
    bias = None if lin.bias is None else lin.bias.detach().float().cpu()
    outs = {"your linear_fn (int8 weights per channel)": linear_fn(x, codes, scale, bias),
            "torch dynamic int8 Linear": _torch_dynamic_linear(lin)(x)}
    norm = float(ref.norm())
    return pd.DataFrame([{"layer": name, "version": k, "rows": x.shape[0],
                          "relative_error": float((y.float() - ref).norm()) / max(norm, 1e-12)}
                         for k, y in outs.items()])


def compare_predictions(preds: dict[str, np.ndarray], labels, baseline: str) -> pd.DataFrame:
    """One row per model: accuracy with its 95% interval, agreement with `baseline`, paired difference from it."""
    if baseline not in preds:
        raise ValueError(f"baseline {baseline!r} is not one of the models: {', '.join(preds)}.")
    labels = np.asarray(labels)
    rows = []
    for name, p in preds.items():
        ci = measure.accuracy_ci(p, labels)
        row = {"model": name, "accuracy": ci["accuracy"], "accuracy (95% interval)": measure.format_accuracy(ci),
               "agreement": measure.agreement(p, preds[baseline])}
        if name != baseline:
            d = measure.paired(p, preds[baseline], labels)
            row.update({"minus " + baseline: f"{d['difference']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
                        "p (McNemar)": round(d["p_value"], 3)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def fake_int8(x: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """Round x to the asymmetric 8-bit grid spanning [lo, hi] (values outside are clipped), back in float."""
    lo, hi = torch.as_tensor(lo, dtype=x.dtype), torch.as_tensor(hi, dtype=x.dtype)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))  # 0 is exact
    scale = ((hi - lo) / 255).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_int8_weights(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor int8 weights (what torch's dynamic int8 Linear stores), back in float."""
    scale = (w.abs().max() / 127).clamp_min(1e-12)
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


class _ActQuant:
    """Forward pre-hook: fake-quantize a Linear's input with a fixed range (static) or this batch's range (dynamic)."""
    def __init__(self, lo: float | None = None, hi: float | None = None):
        self.lo, self.hi = lo, hi

    def __call__(self, module, args):
        x = args[0]
        lo, hi = (x.min(), x.max()) if self.lo is None else (self.lo, self.hi)
        return (fake_int8(x, lo, hi), *args[1:])


@torch.inference_mode()
def calibrate_ranges(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32) -> dict[str, tuple]:
    """Min/max of every encoder Linear's input over calibration texts (the static decision)."""
    ranges: dict[str, list[float]] = {}

    def observer(name):
        def hook(module, args):
            x = args[0]
            lo, hi = ranges.get(name, (math.inf, -math.inf))
            ranges[name] = (min(lo, float(x.min())), max(hi, float(x.max())))
        return hook

    handles = [m.register_forward_pre_hook(observer(n)) for n, m in linears(model).items()]
    try:
        model.eval()
        dev = parts.device_of(model)
        for batch in data.batches(texts, None, tokenizer, batch_size):
            model(**parts.feed(model, batch.to(dev).inputs))
    finally:
        for h in handles:
            h.remove()
    return ranges


def simulated_int8(model: nn.Module, ranges: dict[str, tuple] | None = None, inplace: bool = False) -> nn.Module:
    """SIMULATED int8 (float math, not faster): int8 weights plus activations on a static range or per-batch range.

    With `ranges` (from `calibrate_ranges`) each Linear input is clipped to its calibrated range: static.
    Without, each batch's own min/max sets the scale: dynamic. Same weights either way, so only that decision differs.
    """
    model = (model if inplace else parts.clone(model))
    for name, lin in linears(model).items():
        with torch.no_grad():
            lin.weight.copy_(fake_int8_weights(lin.weight))
        if ranges is None:
            lin.register_forward_pre_hook(_ActQuant())
        else:
            if name not in ranges:
                raise ValueError(f"No calibrated range for {name!r}; calibrate on this model's architecture.")
            lin.register_forward_pre_hook(_ActQuant(*ranges[name]))
    return model


def calibration_texts(size: int = 64) -> list[str]:
    """The `size` shortest training snippets: a deliberately narrow calibration set."""
    train = data.split("train")
    return list(train.loc[train["text"].str.len().sort_values(kind="stable").index[:size], "text"])


def shifted_test(kind: str, limit: int = data.QUICK_LIMIT) -> pd.DataFrame:
    """Test inputs unlike the calibration set: 'normal', 'long' (longest snippets), 'repeated' (x3), 'upper'."""
    test = data.split("test")
    if kind == "normal":
        return data.split("test", limit)
    if kind == "long":
        return test.loc[test["text"].str.len().sort_values(kind="stable").index[-limit:]].reset_index(drop=True)
    base = data.split("test", limit).copy()
    if kind == "repeated":
        base["text"] = (base["text"] + " ") * 2 + base["text"]
    elif kind == "upper":
        base["text"] = base["text"].str.upper()
    else:
        raise ValueError(f"Unknown kind {kind!r}; choose normal, long, repeated or upper.")
    return base


def quantization_robustness(model: nn.Module, tokenizer, kinds=("normal", "long", "repeated", "upper"),
                            calibration_size: int = 64, limit: int = data.QUICK_LIMIT) -> pd.DataFrame:
    """Accuracy (with its 95% interval) and agreement with fp32 of fp32, real dynamic int8, simulated dynamic and
    simulated static int8, on each kind of input."""
    ranges = calibrate_ranges(model, tokenizer, calibration_texts(calibration_size))
    builders = {"fp32": lambda: model, "dynamic int8 (real)": lambda: dynamic_int8(model),
                "dynamic int8 (simulated)": lambda: simulated_int8(model),
                "static int8 (simulated)": lambda: simulated_int8(model, ranges)}
    shifted = {kind: shifted_test(kind, limit) for kind in kinds}
    refs = {kind: measure.predict(model, tokenizer, df["text"]) for kind, df in shifted.items()}
    rows = {}
    for name, build in builders.items():  # one compressed copy alive at a time: a classroom hub has 1-2 GB
        m = build()
        for kind, df in shifted.items():
            preds = refs[kind] if m is model else measure.predict(m, tokenizer, df["text"])
            ci = measure.accuracy_ci(preds, df["label"].to_numpy())
            rows[kind, name] = {"inputs": kind, "model": name, "accuracy": ci["accuracy"], "lo": ci["lo"],
                                "hi": ci["hi"], "n": ci["n"], "agreement": measure.agreement(preds, refs[kind])}
        del m
        memory.release()  # hand this copy's pages back before the next one is built
    return pd.DataFrame([rows[kind, name] for kind in kinds for name in builders])



def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """The main job's row for real dynamic int8 of the blocks' Linear layers, timed beside `model`.

    `limit` measures accuracy on the first `limit` test snippets only (tests); the code path is the same."""
    models = {"dynamic int8 (torch)": dynamic_int8(model)}
    notes = {"dynamic int8 (torch)": "int8 weights, per-batch activation scales"}
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
