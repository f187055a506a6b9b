"""Static activation quantization (notebook 02's own code, its `#@save` cell): an observer picks the range of each
Linear's input on calibration texts, and a forward pre-hook rounds that input to the fixed grid of the range.
Notebook 04 sets this decision, made once ahead of time, against a grid made for each batch while it runs."""

from __future__ import annotations

import copy

import torch
from torch import nn

from labkit.core import measure, parts, settings
from labkit.quant.affine import choose_qparams_affine_with_min_max, dequantize_affine, qrange, quantize_affine


def fake_quantize_range(x: torch.Tensor, lo: float, hi: float, bits: int = 8) -> torch.Tensor:
    """`x` rounded to the asymmetric `bits`-bit grid of the range [lo, hi] (widened to hold 0), clipped outside it."""
    qmin, qmax = qrange(bits)
    scale, zero_point = choose_qparams_affine_with_min_max(lo, hi, "asymmetric", qmin, qmax)
    codes = quantize_affine(x, x.shape, scale, zero_point, qmin, qmax)
    return dequantize_affine(codes, x.shape, scale, zero_point, dtype=x.dtype)


def observe(x: torch.Tensor, bits: int, observer: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
    """The range [lo, hi] an observer picks for the activations `x`: 'minmax' all of it, 'percentile' without the
    rarest outliers, 'mse' the shrunk range whose rounding error (mean squared) on `x` is smallest."""
    x = x.detach().float().reshape(-1)
    lo, hi = float(x.min()), float(x.max())
    if observer == "minmax":
        return lo, hi
    if observer == "percentile":
        q = torch.tensor([1 - percentile / 100, percentile / 100])
        lo, hi = torch.quantile(x[:16_000_000], q)  # torch.quantile takes at most 2^24 values
        return float(lo), float(hi)
    if observer == "mse":
        def error(ratio: float) -> float:
            return float((fake_quantize_range(x, lo * ratio, hi * ratio, bits) - x).pow(2).mean())
        best = min(torch.linspace(0.2, 1.0, 33).tolist(), key=error)
        return lo * best, hi * best
    raise ValueError(f"Unknown observer {observer!r}; choose 'minmax', 'percentile' or 'mse'.")


class FakeQuantInput:
    """A forward pre-hook: the layer's input rounded to the fixed `bits`-bit grid of [lo, hi] (static)."""

    def __init__(self, lo: float, hi: float, bits: int = 8):
        self.lo, self.hi, self.bits = lo, hi, bits

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (fake_quantize_range(args[0], self.lo, self.hi, self.bits),) + tuple(args[1:])


def calibrate(model: nn.Module, tokenizer, texts, bits: int = 8, observer: str = "minmax", filter_fn="all",
              inplace: bool = False) -> nn.Module:
    """A copy of `model` (or `model` itself, `inplace`) whose Linear inputs picked by `filter_fn` are rounded to fixed
    grids, each range chosen by `observer` on what `texts` feed the layer: static quantization, simulated."""
    qrange(bits)  # a bad bit width, then an unknown observer, is refused before any work
    observe(torch.zeros(1), bits, observer)
    out = model if inplace else copy.deepcopy(model)
    layers = parts.linears(out, filter_fn)
    seen = {name: [] for name in layers}
    gen = torch.Generator().manual_seed(0)

    def recorder(name: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1)
            # The extremes (for min/max) and a sample of the rest (for percentile and MSE): all of it would not fit.
            pick = torch.randint(0, len(x), (min(len(x), 20_000),), generator=gen).to(x.device)
            seen[name].append(torch.cat([x[pick], x.min()[None], x.max()[None]]).float().cpu())
        return hook

    handles = [lin.register_forward_pre_hook(recorder(name)) for name, lin in layers.items()]
    try:
        measure.predict(out, tokenizer, texts)
    finally:
        for handle in handles:
            handle.remove()
    for name, lin in layers.items():
        lo, hi = observe(torch.cat(seen[name]), bits, observer)
        lin.register_forward_pre_hook(FakeQuantInput(lo, hi, bits))
    return out


# The lesson's text above; its boolean argument is checked here, outside what the lesson shows.
calibrate = settings.with_flags(calibrate, "inplace")
