"""Notebook 04 (dynamic quantization): activation scales computed per batch, per row, at run time."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from labkit.course.exercises import Mistake, attempt, exercise, given, prediction, written


def _zero_code() -> int:
    return 255  # an all-negative row is widened up to 0, which becomes the top of its grid


@exercise("04.zero_code_negative_row",
          "A token's row of Linear input is all negative: [-3.0, -0.6, -1.5]. On its own dynamic asymmetric 8-bit "
          "grid (codes 0..255), which code stands for 0.0? Answer with an integer.",
          _zero_code,
          {"not_widened": "that code is outside 0..255: the grid was built on the row's own [min, max], which does "
                          "not contain 0. Section 1 widens the range first; where does 0.0 then sit in it?",
           "bottom": "0.0 is the LARGEST value of the widened range here, so it sits at the top of the grid, not "
                     "at the bottom.",
           "wrong": "widen the row's range to include 0 first, then ask where 0.0 falls between the lowest and "
                    "the highest code."},
          ladder=("A dynamic grid is built from the row's own range, but widened so that 0.0 is exactly on it.",
                  "The row's max is -0.6: after widening, the upper end of the range is 0.0 itself.",
                  "The row [0.2, 0.5, 0.8] is all positive: widened to [0, 0.8], 0.0 is its lowest value, code 0."))
def _check_zero_code(answer: Any) -> str | None:
    answer = float(given(answer))
    if answer == _zero_code():
        return None
    if answer > 255 or answer < 0:
        return "not_widened"
    return "bottom" if answer == 0 else "wrong"


# --- 04.dynamic_qparams: one asymmetric 8-bit grid per row, from this batch's own min and max ----------------

def _dynamic_qparams():
    def dynamic_qparams(x):
        lo = torch.clamp(x.amin(dim=1, keepdim=True), max=0.0)  # widened to include 0, so 0.0 is exact
        hi = torch.clamp(x.amax(dim=1, keepdim=True), min=0.0)
        scale = torch.clamp(hi - lo, min=1e-8) / 255  # 256 codes, 255 steps; an all-zero row gets a tiny scale
        zero_point = torch.round(-lo / scale)
        return scale, zero_point
    return dynamic_qparams


def _qparams_golden() -> list[torch.Tensor]:
    """The worked example of the notebook (row 2 is all positive), and rows of very different ranges."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 16, generator=gen) * torch.tensor([[0.1], [1.0], [8.0], [2.0], [0.5]])
    x[3] = x[3].abs() + 0.5  # all positive: 0 is not in its range until it is widened
    x[4] = -x[4].abs() - 0.2  # all negative
    return [torch.tensor([[-1.0, 0.5, 4.1], [0.2, 0.5, 0.8]]), x]


def _rowwise(t: Any, rows: int) -> torch.Tensor | None:
    t = torch.as_tensor(t, dtype=torch.float64)
    return t.reshape(rows) if t.numel() == rows else None


@exercise("04.dynamic_qparams",
          "Write dynamic_qparams(x): x is a float activation (rows, features), one row per token. Return "
          "(scale, zero_point), float tensors of shape (rows, 1): each row's own asymmetric 8-bit grid (codes "
          "0..255) on which 0.0 is exactly a code and the zero point is a valid code. Checked on the worked "
          "example and on rows of very different ranges, all positive and all negative ones included.",
          _dynamic_qparams,
          {"per_batch": "every row got the same scale: that is one grid for the whole batch. Dynamic per-token "
                        "quantization gives EACH row its own, from that row's extremes alone (reduce along the "
                        "features, keeping the dimension).",
           "levels": "your scale is a little too small: 256 codes have 255 steps between them, not 256.",
           "zero_not_exact": "a row that is all positive (or all negative) must still have 0.0 on its grid, or "
                             "padding and ReLU zeros come back as small non-zeros and the zero point falls outside "
                             "0..255: stretch the row's range so that it reaches 0 before you compute the scale.",
           "zero_point_not_integer": "the zero point is a CODE, the integer that stands for 0.0; yours has a "
                                     "fraction.",
           "shape": "return one scale and one zero point per row, each shaped (rows, 1), so that dividing x by the "
                    "scale divides every row by its own; a flat (rows,) tensor would broadcast along the features.",
           "wrong": "per row: the widened range, 255 steps across it, and the code that lands on 0.0. Compare "
                    "with the worked example in section 1."},
          kind="code", uses="the worked example (section 1) and section 5's per_batch_grid hook, which makes each "
                            "batch's grid with it",
          ladder=("Each row (token) gets its own grid from its own smallest and largest value, stretched to "
                  "include 0; the scale is the width of one step, the zero point the code of 0.0.",
                  "Reduce along dim=1 and keep that dimension, so the results are (rows, 1); then widen: the "
                  "lower end may not exceed 0, the upper end may not fall below 0. A row of zeros has width 0: "
                  "give it a tiny minimum before dividing.",
                  "Row [-0.5, 1.5] with 4 codes (2 bits, 3 steps): range [-0.5, 1.5], step 2.0 / 3 = 0.667, "
                  "0.0 is 0.5 / 0.667 = 0.75 steps up, so the zero point is code 1. Row [2.0, 3.0]: widened to "
                  "[0, 3.0], step 1.0, zero point 0."))
def _check_dynamic_qparams(answer: Any) -> str | None:
    for x in _qparams_golden():
        out = attempt(answer, x.clone())
        if not isinstance(out, tuple) or len(out) != 2:
            raise Mistake("wrong_type", "return two tensors: (scale, zero_point)")
        rows = x.shape[0]
        scale, zp = (torch.as_tensor(t, dtype=torch.float64) for t in out)
        x64 = x.to(torch.float64)
        mn, mx = x64.amin(1), x64.amax(1)
        lo, hi = mn.clamp(max=0), mx.clamp(min=0)
        if scale.numel() == 1 or (torch.unique(scale).numel() == 1 and scale.numel() == rows):
            return "per_batch"
        s, z = _rowwise(scale, rows), _rowwise(zp, rows)
        if s is None or z is None:
            return "shape"
        want = (hi - lo) / 255
        if not torch.allclose(s, want, rtol=1e-5, atol=1e-9):
            if torch.allclose(s, (hi - lo) / 256, rtol=1e-5) or torch.allclose(s, (mx - mn) / 256, rtol=1e-5):
                return "levels"
            if torch.allclose(s, (mx - mn) / 255, rtol=1e-5):
                return "zero_not_exact"
            return "wrong"
        if tuple(scale.shape) != (rows, 1) or tuple(torch.as_tensor(out[1]).shape) != (rows, 1):
            return "shape"
        if not torch.equal(z, z.round()):
            return "zero_point_not_integer"
        r = -lo / want
        tie = (r - r.floor() - 0.5).abs() < 1e-4  # float32 and float64 may round an exact .5 either way
        if not ((z == r.round()) | (tie & ((z == r.floor()) | (z == r.ceil())))).all():
            return "wrong"
    return None


# --- 04.dynamic_int8_linear: int8 weights made once, each batch's activation grid made while it runs ----------

def _dynamic_int8_linear():
    class DynamicInt8Linear(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            weight = layer.weight.detach().float()
            self.w_scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127  # symmetric, one per output channel
            self.w_codes = torch.clamp(torch.round(weight / self.w_scale[:, None]), -127, 127).to(torch.int8)
            self.bias = None if layer.bias is None else layer.bias.detach().clone()

        def forward(self, x):
            rows = x.reshape(-1, x.shape[-1])  # every token of every snippet: one row each
            lo = rows.amin(dim=1, keepdim=True).clamp(max=0.0)
            hi = rows.amax(dim=1, keepdim=True).clamp(min=0.0)
            x_scale = (hi - lo).clamp(min=1e-8) / 255
            x_zero = torch.round(-lo / x_scale)
            x_codes = torch.clamp(torch.round(rows / x_scale) + x_zero, 0, 255)
            # integer products summed exactly in int32, then one rescale per output
            acc = (x_codes - x_zero).to(torch.int32) @ self.w_codes.to(torch.int32).T
            y = acc.to(torch.float32) * (x_scale * self.w_scale)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], -1)
    return DynamicInt8Linear


_MATMULS = {"matmul", "mm", "bmm", "__matmul__", "__rmatmul__", "linear", "einsum", "addmm", "tensordot", "inner",
            "mv", "dot", "baddbmm", "addmv", "addbmm", "chain_matmul", "multi_dot", "conv1d"}


class _MatmulWatch(TorchFunctionMode):
    """Records whether any matrix product inside the learner's forward multiplied non-integer floats."""

    def __init__(self):
        super().__init__()
        self.float_products = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _MATMULS:
            flat = list(args) + list((kwargs or {}).values())
            tensors = [t for a in flat for t in (a if isinstance(a, (list, tuple)) else [a])
                       if isinstance(t, torch.Tensor)]
            # dequantized values are fractional; integer codes held in a float tensor are still integer math
            if any(t.is_floating_point() and not torch.equal(t, t.round()) for t in tensors):
                self.float_products += 1
        return func(*args, **(kwargs or {}))


def _linear_golden(rows: int, out: int, seed: int, with_bias: bool):
    """A Linear whose weights sit exactly on a per-channel int8 grid (every row reaches code +-127), its input."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 32, generator=gen) * torch.linspace(0.3, 3.0, rows)[:, None] + 0.8
    w_codes = torch.randint(-126, 127, (out, 32), generator=gen, dtype=torch.int8)
    w_codes[torch.arange(out), torch.arange(out) % 32] = torch.where(torch.arange(out) % 2 == 0, 127, -127).to(
        torch.int8)
    w_scale = torch.rand(out, generator=gen) * 0.02 + 0.001
    linear = torch.nn.Linear(32, out, bias=with_bias)
    with torch.no_grad():
        linear.weight.copy_(w_codes.float() * w_scale[:, None])
        if with_bias:
            linear.bias.copy_(torch.randn(out, generator=gen))
    return x, linear, w_codes, w_scale


def _linear_reference(x, w_codes, w_scale, bias):
    """Exact pieces in float64: the accumulator with and without the zero-point correction, the two scales."""
    x64 = x.to(torch.float64)
    lo, hi = x64.amin(1, keepdim=True).clamp(max=0), x64.amax(1, keepdim=True).clamp(min=0)
    xs = (hi - lo).clamp(min=1e-8) / 255
    xz = torch.round(-lo / xs)
    codes = torch.clamp(torch.round(x64 / xs) + xz, 0, 255)
    w = w_codes.to(torch.float64)
    return {"acc": (codes - xz) @ w.T, "acc_no_zero": codes @ w.T, "xs": xs, "ws": w_scale.to(torch.float64),
            "bias": bias.to(torch.float64), "codes": codes, "xz": xz}


def _near(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.shape != want.shape:
        return False
    # float32 output of an exact integer sum (relative error near 1e-7), plus room for x / scale computed in
    # float32 landing on the other side of a .5 now and then (one code: acc moves by at most 127)
    return bool(((got - want).abs() <= 1e-3 * want.abs().max() + 1e-5).all())


def _has_int8_weights(module: Any, out: int, features: int) -> bool:
    found = list(vars(module).values()) + list(getattr(module, "_buffers", {}).values())
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.int8 and tuple(t.shape) == (out, features)
               for t in found)


@exercise("04.dynamic_int8_linear",
          "Write the class DynamicInt8Linear(nn.Module). __init__(self, linear) takes a float nn.Linear (out, in) "
          "and stores, once, its weight as int8 codes (-127..127, one symmetric scale per output channel) and its "
          "bias (which may be None). forward(self, x) takes float x (..., in), gives every row (token) its own "
          "8-bit activation grid made from this very batch, multiplies integer codes only, summing in int32, "
          "and returns float (..., out). Checked on golden Linears whose weights sit exactly on an int8 grid, "
          "against the exact integer result, and watched: a matrix product of dequantized floats does not count.",
          _dynamic_int8_linear,
          {"weights_not_int8": "__init__ must keep the weight as int8 codes (an int8 tensor of shape (out, in)), "
                               "made once: quantizing the weights again in every forward is work a dynamic "
                               "Linear does not do.",
           "float_matmul": "your matrix product multiplied fractional floats: that dequantizes BEFORE the product, "
                           "so no integer math happens. Multiply the codes as integers and bring the scales in "
                           "once, afterwards.",
           "no_zero_point": "the activation codes were multiplied as they are, but code c stands for the value "
                            "(c - zero point) * scale: the integer sum is shifted in every output.",
           "weight_per_tensor": "your weight grid has one scale for the whole matrix; the contract asks for one "
                                "per output channel (row of the weight), each from that row's largest magnitude.",
           "wrong_scale": "the integers are right but the rescale is not: output j of token i needs token i's "
                          "activation scale AND channel j's weight scale; check which axis each one runs along.",
           "no_bias": "everything but the bias: it is added once, in float, after the rescale.",
           "shape": "the output must be (..., out_features), with the leading dimensions of x kept: a (2, 3, in) "
                    "input gives (2, 3, out). Work on x as (rows, in), then give it its shape back.",
           "wrong": "per token: a widened range, its scale and zero point, codes 0..255; then the integer product "
                    "with the weight codes, in int32, and one rescale per output. Compare with section 2's "
                    "formula for y[i, j]."},
          kind="code", uses="every Linear of the baseline's blocks (section 3), and block 0's query projection on "
                            "its real input (section 2)",
          ladder=("A dynamic int8 Linear does three things: ahead of time, weight -> int8 codes with a scale per "
                  "output channel; at run time, each token's input -> codes 0..255 on its own grid; then an "
                  "integer matrix product whose int32 sum is turned into float by the two scales, once per "
                  "output.",
                  "The zero point has to come off the activation codes BEFORE the integer product, and both "
                  "factors must be int32 then, or the products overflow int8 and the sum is not exact. The "
                  "rescale is an outer product: activation scales as a column (rows, 1), weight scales as a row "
                  "(out,).",
                  "One token x = [1.0, -1.0], weight row w = [0.5, -0.25], no bias. Weight: scale 0.5 / 127, "
                  "codes [127, -64] (rounded). Token: widened range [-1, 1], step 2 / 255, zero point 128 "
                  "(rounded), codes [255, 0]; minus 128: [127, -128]. Integer sum 127 * 127 + (-128) * (-64) = "
                  "24321; times (2 / 255) * (0.5 / 127) = 0.7509, against 0.75 in float."))
def _check_dynamic_int8_linear(answer: Any) -> str | None:
    for rows, out, seed, with_bias in ((6, 5, 0, True), (7, 7, 1, True), (4, 3, 2, False)):
        x, linear, w_codes, w_scale = _linear_golden(rows, out, seed, with_bias)
        layer = attempt(answer, linear)
        if not callable(layer):
            raise Mistake("wrong_type", "DynamicInt8Linear(linear) must give a module, got {type}",
                          type=type(layer).__name__)
        watch = _MatmulWatch()
        with watch:
            y = attempt(layer, x)  # a forward still left as its stub is "not attempted yet"
            y3 = attempt(layer, x[:4].reshape(2, 2, 32))
        if not isinstance(y, torch.Tensor) or not isinstance(y3, torch.Tensor):
            raise Mistake("wrong_type", "forward must return a tensor, got {type}", type=type(y).__name__)
        if not _has_int8_weights(layer, out, 32):
            return "weights_not_int8"
        if tuple(y.shape) != (rows, out) or tuple(y3.shape) != (2, 2, out):
            return "shape"
        if watch.float_products:
            return "float_matmul"
        bias = linear.bias.detach() if with_bias else torch.zeros(out)
        ref = _linear_reference(x, w_codes, w_scale, bias)
        got, b = y.detach().to(torch.float64), ref["bias"]
        acc, xs, ws = ref["acc"], ref["xs"], ref["ws"]
        if _near(got, acc * xs * ws + b):
            if not _near(y3.detach().to(torch.float64).reshape(4, out), (acc * xs * ws + b)[:4]):
                return "shape"
            continue
        if _near(got, ref["acc_no_zero"] * xs * ws + b):
            return "no_zero_point"
        if with_bias and _near(got, acc * xs * ws):
            return "no_bias"
        w = w_codes.to(torch.float64) * ws[:, None]
        ws_t = w.abs().max() / 127
        acc_t = (ref["codes"] - ref["xz"]) @ torch.clamp(torch.round(w / ws_t), -127, 127).T
        if _near(got, acc_t * xs * ws_t + b):
            return "weight_per_tensor"
        wrong_scales = [acc * xs, acc * ws, acc, acc * xs * ws.mean(), acc * xs / ws, acc / (xs * ws)]
        if rows == out:
            wrong_scales.append(acc * xs.T * ws[:, None])  # each scale broadcast along the other axis
        if any(_near(got, c + b) or _near(got, c) for c in wrong_scales):
            return "wrong_scale"
        return "wrong"
    return None


# --- what the learner predicts and explains --------------------------------------------------------------------

prediction("04.int8_speedup_b32", "How many times faster than fp32 is torch's dynamic int8 model at batch 32 on "
                                  "this machine?", unit="x")
prediction("04.size_ratio", "How many times smaller is the whole model once its blocks' Linears store int8 "
                            "weights (serialized bytes, fp32 / int8)?", unit="x")
written("04.why_per_row", "Your layer (a grid per token, a scale per weight channel) and torch's (one grid per "
                          "batch, one scale per weight matrix) have different errors in section 2. Using the "
                          "histogram of the tokens' ranges, explain the gap and which of the two choices it "
                          "speaks to.", points=2)
