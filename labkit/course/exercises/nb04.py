"""Notebook 04 (dynamic quantization): activation scales computed per batch, per row, at run time."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from labkit.course.exercises import Mistake, attempt, close, exercise, given


def _dynamic_scale() -> float:
    return (2.88 - (-1.2)) / 255  # a range other than the worked example's, so the answer is not on the page


@exercise("04.dynamic_scale",
          "Dynamic quantization sees a batch whose Linear input spans [-1.2, 2.88]. What asymmetric 8-bit scale "
          "does it use for that batch?",
          _dynamic_scale,
          {"symmetric": "that is a symmetric scale from max|x| alone; asymmetric spans max - min of the batch.",
           "levels": "256 codes have 255 steps between them: divide by 2^8 - 1, not 2^8.",
           "wrong": "the 256 codes 0..255 must span max - min of THIS batch: scale = (max - min) / 255."})
def _check_dynamic_scale(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, _dynamic_scale(), 1e-6):
        return None
    if close(answer, 2.88 / 127.5, 1e-6) or close(answer, 2.88 / 127, 1e-6):
        return "symmetric"
    return "levels" if close(answer, 4.08 / 256, 1e-6) else "wrong"


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
          "Write dynamic_qparams(x): for a float activation x of shape (rows, features), one asymmetric 8-bit "
          "grid (codes 0..255) PER ROW from that row's own min and max, widened to include 0. Return "
          "(scale, zero_point), each of shape (rows, 1).",
          _dynamic_qparams,
          {"per_batch": "every row got the same scale: that is one grid for the whole batch. Dynamic per-token "
                        "quantization gives EACH row its own: take min and max along dim=1 (keepdim=True).",
           "levels": "256 codes have 255 steps between them: scale = (max - min) / 255, not / 256.",
           "zero_not_exact": "a row that is all positive (or all negative) must still have 0.0 on its grid, or "
                             "padding and ReLU zeros come back as small non-zeros and the zero point falls outside "
                             "0..255: widen the range first, lo = min(row min, 0), hi = max(row max, 0).",
           "zero_point_not_integer": "the zero point is a CODE, the integer that stands for 0.0: round(-lo / scale).",
           "shape": "return one scale and one zero point per row, each shaped (rows, 1) (keepdim=True), so that "
                    "x / scale divides every row by its own scale.",
           "wrong": "per row: lo = min(min, 0), hi = max(max, 0), scale = (hi - lo) / 255, zero_point = "
                    "round(-lo / scale)."},
          kind="code", uses="inside your dynamic_linear (04.dynamic_linear), which then runs every Linear of the "
                            "baseline's blocks through the notebook's DynamicInt8Linear; section 5's "
                            "per_batch_grid hook makes each batch's grid with it")
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


# --- 04.dynamic_linear: quantize the activation at run time, multiply integers, rescale once ----------------

def _dynamic_linear():
    def dynamic_linear(x, w_codes, w_scale, bias):
        lo = torch.clamp(x.amin(dim=1, keepdim=True), max=0.0)
        hi = torch.clamp(x.amax(dim=1, keepdim=True), min=0.0)
        x_scale = torch.clamp(hi - lo, min=1e-8) / 255
        x_zero = torch.round(-lo / x_scale)
        x_codes = torch.clamp(torch.round(x / x_scale) + x_zero, 0, 255)
        # subtract the zero point, then integer products summed exactly in int32
        acc = (x_codes - x_zero).to(torch.int32) @ w_codes.to(torch.int32).T
        y = acc.to(torch.float32) * (x_scale * w_scale)  # (rows, 1) * (out,): one product per output
        return y if bias is None else y + bias
    return dynamic_linear


_MATMULS = {"matmul", "mm", "bmm", "__matmul__", "__rmatmul__", "linear", "einsum", "addmm", "tensordot", "inner",
            "mv", "dot", "baddbmm", "addmv", "addbmm", "chain_matmul", "multi_dot", "conv1d"}


class _MatmulWatch(TorchFunctionMode):
    """Records whether any matrix product inside the learner's function multiplied non-integer floats."""

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


def _linear_golden(rows: int, out: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 32, generator=gen) * torch.linspace(0.3, 3.0, rows)[:, None] + 0.8
    w_codes = torch.randint(-127, 128, (out, 32), generator=gen, dtype=torch.int8)
    w_scale = torch.rand(out, generator=gen) * 0.02 + 0.001
    bias = torch.randn(out, generator=gen)
    return x, w_codes, w_scale, bias


def _linear_reference(x, w_codes, w_scale, bias):
    """Exact pieces in float64: the accumulator with and without the zero-point correction, the two scales."""
    x64 = x.to(torch.float64)
    lo, hi = x64.amin(1, keepdim=True).clamp(max=0), x64.amax(1, keepdim=True).clamp(min=0)
    xs = (hi - lo).clamp(min=1e-8) / 255
    xz = torch.round(-lo / xs)
    codes = torch.clamp(torch.round(x64 / xs) + xz, 0, 255)
    w = w_codes.to(torch.float64)
    return {"acc": (codes - xz) @ w.T, "acc_no_zero": codes @ w.T, "xs": xs, "ws": w_scale.to(torch.float64),
            "bias": bias.to(torch.float64)}


def _near(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.shape != want.shape:
        return False
    # float32 output of an exact integer sum (relative error near 1e-7), plus room for x / scale computed in
    # float32 landing on the other side of a .5 now and then (one code: acc moves by at most 127)
    return bool(((got - want).abs() <= 1e-3 * want.abs().max() + 1e-5).all())


@exercise("04.dynamic_linear",
          "Write dynamic_linear(x, w_codes, w_scale, bias): quantize x (rows, in) with its per-row dynamic_qparams, "
          "multiply the codes (minus their zero point) by the int8 weight codes (out, in) in int32, then rescale to "
          "float with x_scale * w_scale and add the bias (which may be None). Return float y of shape (rows, out).",
          _dynamic_linear,
          {"float_matmul": "your matrix product multiplied fractional floats: that dequantizes BEFORE the product, "
                           "so no integer math happens. Multiply the integer codes, (x_codes - zero_point) and "
                           "w_codes, both .to(torch.int32), and apply the scales once, to the int32 result.",
           "no_zero_point": "the codes were multiplied as they are: code c stands for (c - zero_point) * scale, so "
                            "subtract the zero point from the activation codes before the product.",
           "wrong_scale": "the integers are right but the rescale is not: output j of row i is acc[i, j] * "
                          "x_scale[i] * w_scale[j], i.e. acc * (x_scale * w_scale) with x_scale of shape (rows, 1) "
                          "and w_scale of shape (out,).",
           "no_bias": "everything but the bias: add `bias` (when it is not None) after rescaling.",
           "shape": "the output must be (rows, out_features): multiply by the TRANSPOSED weight codes, x @ W.T.",
           "wrong": "x_scale, x_zero = qparams(x); codes = clamp(round(x / x_scale) + x_zero, 0, 255); acc = "
                    "(codes - x_zero) as int32 @ w_codes.T as int32; y = acc * x_scale * w_scale + bias."},
          kind="code", uses="every Linear of the baseline's blocks, through the notebook's "
                            "DynamicInt8Linear (section 3)")
def _check_dynamic_linear(answer: Any) -> str | None:
    for rows, out, seed, with_bias in ((6, 5, 0, True), (7, 7, 1, True), (4, 3, 2, False)):
        x, w_codes, w_scale, bias = _linear_golden(rows, out, seed)
        bias = bias if with_bias else None
        watch = _MatmulWatch()
        with watch:
            y = attempt(answer, x, w_codes, w_scale, bias)
        if not isinstance(y, torch.Tensor):
            raise Mistake("wrong_type", f"return a tensor, got {type(y).__name__}")
        if tuple(y.shape) != (rows, out):
            return "shape"
        if watch.float_products:
            return "float_matmul"
        ref = _linear_reference(x, w_codes, w_scale, bias if bias is not None else torch.zeros(out))
        got, b = y.detach().to(torch.float64), ref["bias"]
        acc, xs, ws = ref["acc"], ref["xs"], ref["ws"]
        if _near(got, acc * xs * ws + b):
            continue
        if _near(got, ref["acc_no_zero"] * xs * ws + b):
            return "no_zero_point"
        if with_bias and _near(got, acc * xs * ws):
            return "no_bias"
        wrong_scales = [acc * xs, acc * ws, acc, acc * xs * ws.mean(), acc * xs / ws, acc / (xs * ws)]
        if rows == out:
            wrong_scales.append(acc * xs.T * ws[:, None])  # each scale broadcast along the other axis
        if any(_near(got, c + b) or _near(got, c) for c in wrong_scales):
            return "wrong_scale"
        return "wrong"
    return None
