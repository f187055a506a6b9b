"""Notebook 02 (quantization): the grid of a range, integer codes, symmetric codes, an integer-only Linear,
k-means codebooks and the straight-through estimator; two predictions and a written question."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given, prediction, written
from labkit.quant import affine


def _qparams(lo, hi, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The asymmetric `bits`-bit grid of the ranges [lo, hi], by the kit's one primitive."""
    return affine.choose_qparams_affine_with_min_max(lo, hi, "asymmetric", *affine.qrange(bits))


# --- 02.widened_grid: what widening the range to hold 0.0 costs -------------------------------------------

def _widened_grid() -> tuple[int, float]:
    scale, zp = _qparams(0.5, 2.0, 2)
    return int(zp), float(scale) / 2


@exercise("02.widened_grid",
          "Weights of one row all lie between 0.5 and 2.0 (none is negative). On a 2-bit asymmetric grid (codes "
          "0..3) made as section 1 teaches, give (zero_point, largest_error): the code that stands for 0.0, and "
          "the largest distance between a value of [0.5, 2.0] and the grid value it is rounded to.",
          _widened_grid,
          {"no_widen": "you spread the grid over [0.5, 2.0] itself; but then 0.0 has no code (the zero point would "
                       "have to be negative). The range is first widened to hold 0.0, and that costs resolution.",
           "full_step": "a value is rounded to the *nearest* grid value, so it is never more than half a step away.",
           "wrong": "first decide which range the grid covers once 0.0 must be on it; its step follows, and the "
                    "worst rounding error is a fraction of that step."},
          ladder=("A grid must give 0.0 a code of its own, so the range it covers always contains 0.0, even when "
                  "no weight is negative. The largest rounding error is set by the step between grid values.",
                  "The step that goes wrong: computing the step from [0.5, 2.0] instead of the widened range, "
                  "and forgetting that rounding goes to the *nearest* grid value.",
                  "A smaller case: values in [1.0, 3.0] on a 1-bit grid (codes 0 and 1). Widened to [0, 3], the "
                  "step is 3.0, code 0 stands for 0.0 and code 1 for 3.0; 1.4 rounds to 0.0 and 1.6 to 3.0, so no "
                  "value is more than 1.5 from its grid value."))
def _check_widened_grid(answer: Any) -> str | None:
    zp, err = given(answer)
    want_zp, want_err = _widened_grid()
    if close(err, 1.5 / 3 / 2, 1e-3) or int(round(float(zp))) == -1:
        return "no_widen"
    if close(err, 2 * want_err, 1e-3):
        return "full_step"
    return None if int(round(float(zp))) == want_zp and close(err, want_err, 1e-3) else "wrong"


# --- 02.scale_and_zero_point: the grid of a range, as a function ------------------------------------------

def _scale_and_zero_point_solution():
    def scale_and_zero_point(lo: torch.Tensor, hi: torch.Tensor, bits: int):
        lo = torch.clamp(lo, max=0.0)  # widen the range to hold 0.0 ...
        hi = torch.clamp(hi, min=0.0)  # ... so that 0.0 gets a code of its own
        # a row of zeros (a pruned row) has no range: the smallest float32 step keeps the division defined
        scale = torch.clamp((hi - lo) / (2 ** bits - 1), min=torch.finfo(torch.float32).eps)
        zero_point = torch.round(-lo / scale)
        return scale, zero_point
    return scale_and_zero_point


# Several ranges at once (one per row of a weight, as fake_quantize_rows calls it): straddling 0, symmetric,
# wholly positive and wholly negative (those two must first be widened to include 0), and a row of zeros.
_RANGES_LO = torch.tensor([-1.0, -0.5, 0.25, -2.0, -0.3, -0.01, 0.0])
_RANGES_HI = torch.tensor([3.0, 0.5, 2.0, -0.5, 0.9, 0.02, 0.0])


def _ranges_want(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _qparams(_RANGES_LO, _RANGES_HI, bits)


@exercise("02.scale_and_zero_point",
          "Write scale_and_zero_point(lo, hi, bits) -> (scale, zero_point): the asymmetric grid (codes "
          "0..2^bits - 1) of each range [lo, hi], as section 1 builds it. lo and hi are float tensors of the same "
          "shape, one range per row; return two float tensors of that shape (the zero points whole numbers). "
          "Checked on seven ranges at 8 and 2 bits: straddling 0, wholly positive, wholly negative, and a row "
          "of zeros (a pruned row), whose zero point must be 0, not nan.",
          _scale_and_zero_point_solution,
          {"levels": "2^bits codes have one step fewer between them than there are codes: your step is a little "
                     "too small, so the top code falls short of the top of the range.",
           "zp_not_rounded": "the zero point is a code, so it must be a whole number: 0.0 must land exactly on "
                             "a code, or it would not come back exactly.",
           "no_widen": "a range that does not contain 0.0 must first be stretched until it does; otherwise 0.0 "
                       "has no code and the zero point falls outside the grid.",
           "zp_sign": "the zero point is the code that stands for 0.0; the range's low end has code 0, so 0.0 "
                      "sits above it and its code is positive when lo is negative. Check the sign.",
           "scalar_only": "lo and hi are tensors holding one range per row: Python's min, max and round see one "
                          "number at a time; use the torch operations that work element by element.",
           "zero_range": "a row of zeros has a range of width 0, so its step is 0 and the zero point is 0 / 0 = "
                         "nan. Keep the step above a tiny positive floor (float32's epsilon) so that this row "
                         "still gets zero point 0.",
           "wrong": "build the grid in the order section 1 does: widen the range, then the step, then the code "
                    "of 0.0. Compare your numbers with the worked example (-1.0 .. 3.0 at 2 bits)."},
          kind="code",
          uses="section 3: fake_quantize_rows gives every weight row of the real baseline its grid with it; "
               "section 7's IntegerLinear makes its input and output grids with it.",
          ladder=("A grid ties codes 0..2^bits - 1 to floats by two numbers: the float step between neighbouring "
                  "codes (the scale) and the code that stands for 0.0 (the zero point). The lowest code stands for "
                  "the low end of the range, the highest for the high end.",
                  "The steps that usually go wrong: counting steps (one fewer than codes), not widening a range "
                  "that lies wholly on one side of 0.0, and a range of width 0 dividing by zero.",
                  "A smaller case: the range [0.2, 0.8] at 1 bit. Widened: [0.0, 0.8]; two codes, one step of 0.8; "
                  "0.0 is the low end, so its code is 0. The range [-0.6, -0.2] at 1 bit: widened [-0.6, 0.0], "
                  "step 0.6, and 0.0 is code 1."))
def _check_scale_and_zero_point(answer: Any) -> str | None:
    # 1. One range, as 0-d tensors: the worked example (-1.0 .. 3.0, 8 bits).
    out = attempt(answer, torch.tensor(-1.0), torch.tensor(3.0), 8)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mistake("wrong_type", "return a pair (scale, zero_point)")
    # 2. Seven ranges at once, at 8 and at 2 bits; the last row is all zeros.
    some = slice(0, len(_RANGES_LO) - 1)
    for bits in (8, 2):
        try:
            scale, zp = attempt(answer, _RANGES_LO.clone(), _RANGES_HI.clone(), bits)
        except (TypeError, RuntimeError):
            return "scalar_only"
        scale = torch.as_tensor(scale, dtype=torch.float64).expand(len(_RANGES_LO))
        zp = torch.as_tensor(zp, dtype=torch.float64).expand(len(_RANGES_LO))
        want_scale, want_zp = (t.to(torch.float64).reshape(-1) for t in _ranges_want(bits))
        if not torch.allclose(scale[some], want_scale[some], rtol=1e-5):
            if torch.allclose(scale[some], (want_scale * (2 ** bits - 1) / 2 ** bits)[some], rtol=1e-5):
                return "levels"
            raw = (_RANGES_HI - _RANGES_LO).to(torch.float64)[some]
            if (torch.allclose(scale[some], raw / (2 ** bits - 1), rtol=1e-5)
                    or torch.allclose(scale[some], raw / 2 ** bits, rtol=1e-5)):
                return "no_widen"
            return "wrong"
        if not bool(torch.isfinite(zp[some]).all()) or not torch.equal(zp[some], zp[some].round()):
            return "zp_not_rounded"
        if torch.equal(zp[some], -want_zp[some]) and bool((want_zp != 0).any()):
            return "zp_sign"
        if not torch.equal(zp[some], want_zp[some]):
            return "wrong"
        if not bool(torch.isfinite(zp[-1])) or float(zp[-1]) != 0.0 or not float(scale[-1]) > 0:
            return "zero_range"
    return None


# --- 02.linear_quantize: codes from a scale and a zero point -------------------------------------------

def _linear_quantize_solution():
    def linear_quantize(x: torch.Tensor, scale, zero_point, bits: int) -> torch.Tensor:
        codes = torch.round(x / scale) + zero_point
        codes = torch.clamp(codes, 0, 2 ** bits - 1)
        return codes.to(torch.uint8 if bits <= 8 else torch.int32)
    return linear_quantize


# Golden tensors of MIT 6.5940 (TinyML and Efficient Deep Learning), lab 2, `test_linear_quantize`
# (mit-han-lab/efficientml.ai labs; seen in public copies of lab2 test code): a 5x5 tensor on a 2-bit grid,
# scale 1/3, zero point -1 on the *signed* codes -2..1. Our asymmetric grid is unsigned (0..3): the same
# grid shifted by 2, so the zero point becomes 1 and every expected code is theirs + 2.
_MIT_X = torch.tensor([[0.0523, 0.6364, -0.0968, -0.0020, 0.1940],
                       [0.7500, 0.5507, 0.6188, -0.1734, 0.4677],
                       [-0.0669, 0.3836, 0.4297, 0.6267, -0.0695],
                       [0.1536, -0.0038, 0.6075, 0.6817, 0.0601],
                       [0.6446, -0.2500, 0.5376, -0.2226, 0.2333]])
_MIT_CODES = torch.tensor([[-1, 1, -1, -1, 0],
                           [1, 1, 1, -2, 0],
                           [-1, 0, 0, 1, -1],
                           [-1, -1, 1, 1, -1],
                           [1, -2, 1, -2, 0]]) + 2
# Our own small case, on paper: 2 bits, scale 0.5, zero point 1. x / scale = -4, -1.2, -0.4, 0, 0.6, 1.4, 2, 3.2;
# rounded and shifted: -3, 0, 1, 1, 2, 2, 3, 4; clamped to 0..3: the codes below (two values fall off the grid).
_PAPER_X = torch.tensor([-2.0, -0.6, -0.2, 0.0, 0.3, 0.7, 1.0, 1.6])
_PAPER_CODES = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _lq_reference(x: torch.Tensor, scale, zp, bits: int, qmax: int | None = None, sign: int = 1,
                  rounding=torch.round) -> torch.Tensor:
    qmax = 2 ** bits - 1 if qmax is None else qmax
    return torch.clamp(rounding(x / scale) + sign * zp, 0, qmax).to(torch.int64)


def _row_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 bits, one grid per row (scale and zero point of shape (rows, 1)), as fake_quantize calls it."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 40, generator=gen) * torch.tensor([0.1, 0.5, 1.0, 2.0, 0.05, 3.0]).unsqueeze(1)
    scale, zp = _qparams(x.amin(1, keepdim=True), x.amax(1, keepdim=True), 8)
    return x, scale, zp


@exercise("02.linear_quantize",
          "Write linear_quantize(x, scale, zero_point, bits) -> the integer codes of x on the asymmetric grid "
          "(codes 0..2^bits - 1) that scale and zero_point define, as section 1 teaches; values beyond the grid "
          "get its end codes. Return an integer tensor of x's shape (torch.uint8 for bits <= 8). scale and "
          "zero_point may be numbers or tensors that broadcast against x (one per row). Checked on a paper case, "
          "on the 2-bit golden tensor of MIT 6.5940's lab 2 and on 6 rows of random weights at 8 bits.",
          _linear_quantize_solution,
          {"no_clamp": "some codes fall outside 0..2^bits - 1: a value beyond the range has no code of its own, so "
                       "it must land on the nearest end of the grid.",
           "qmax_off_by_one": "your largest code is one too many: a b-bit code holds 2^b values, counted from 0 "
                              "(3 is the top code of 2 bits, 255 of 8).",
           "zp_sign": "the zero point is the code of 0.0, so a value of 0.0 must come out as exactly that code; "
                      "yours comes out on the other side of 0. Check the sign with which it enters.",
           "truncates": "0.6 steps above a code is nearer to the next code: round to the *nearest* integer. "
                        ".int(), .long() and floor cut towards zero or down.",
           "float_dtype": "the values are right, but codes are integers: return an integer tensor, which is what "
                          "an int8 file or kernel stores.",
           "signed_dtype": "torch.int8 holds -128..127, so codes 128..255 wrapped around to negative numbers: "
                           "the unsigned grid 0..255 needs an unsigned (or a wider) integer type.",
           "wrong": "your codes differ from the grid's: work the paper case of the hints (checks.hint) by hand, then "
                    "compare it with what your function returns."},
          kind="code",
          uses="section 3: fake_quantize_rows rounds every Linear weight of the real baseline with it, then "
               "compared weight for weight with the kit's fake_quantize.",
          ladder=("A code counts steps of size `scale` from the code of 0.0 (the zero point), rounded to a whole "
                  "step; the grid has only 2^bits codes, so whatever falls beyond it is pinned to an end.",
                  "The steps that usually go wrong: the order (divide, round, then shift by the zero point; clamp "
                  "last, after rounding), the top code (2^bits - 1), and the dtype: a float tensor of whole "
                  "numbers is not an integer tensor.",
                  "A smaller case: 2 bits, scale 0.5, zero point 1. x = 0.7 is 1.4 steps, rounded 1, plus the zero "
                  "point: code 2. x = -2.0 is -4 steps, code -3, clamped to 0. x = 1.6 is 3.2 steps, code 4, "
                  "clamped to 3."))
def _check_linear_quantize(answer: Any) -> str | None:
    x_row, scale_row, zp_row = _row_case()
    cases = [(_PAPER_X, 0.5, 1, 2, _PAPER_CODES), (_MIT_X, 1 / 3, 1, 2, _MIT_CODES),
             (x_row, scale_row, zp_row, 8, _lq_reference(x_row, scale_row, zp_row, 8))]
    for x, scale, zp, bits, want in cases:
        got = torch.as_tensor(attempt(answer, x.clone(), scale, zp, bits))
        if got.shape != want.shape:
            return "wrong"
        if torch.is_floating_point(got):
            return "float_dtype" if torch.equal(got.to(torch.float64), want.to(torch.float64)) else _why(got, x, scale, zp, bits)
        got = got.to(torch.int64)
        if torch.equal(got, want):
            continue
        if torch.equal(got, want.to(torch.int8).to(torch.int64)):  # 128..255 wrapped to -128..-1
            return "signed_dtype"
        return _why(got, x, scale, zp, bits)
    return None


def _why(got: torch.Tensor, x: torch.Tensor, scale, zp, bits: int) -> str:
    """Name the mistake by which wrong formula reproduces the learner's codes."""
    got = got.to(torch.float64)
    variants = {"no_clamp": (torch.round(x / scale) + zp),
                "qmax_off_by_one": _lq_reference(x, scale, zp, bits, qmax=2 ** bits),
                "zp_sign": _lq_reference(x, scale, zp, bits, sign=-1),
                "truncates": _lq_reference(x, scale, zp, bits, rounding=torch.trunc)}
    for name, codes in variants.items():
        if torch.equal(got, codes.to(torch.float64)):
            return name
    if bool((got < 0).any() or (got > 2 ** bits - 1).any()):
        return "no_clamp"
    floor = _lq_reference(x, scale, zp, bits, rounding=torch.floor).to(torch.float64)
    return "truncates" if torch.equal(got, floor) else "wrong"


# --- 02.symmetric_round (kept from the first edition) ---------------------------------------------------

def _symmetric_round():
    def symmetric_codes(w: torch.Tensor, bits: int) -> torch.Tensor:
        scale = w.abs().max() / ((2 ** bits - 1) / 2)
        return torch.clamp(torch.round(w / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return symmetric_codes


@exercise("02.symmetric_round",
          "Write symmetric_codes(w, bits) -> the signed codes of w on one symmetric grid for the whole tensor, as "
          "section 2 defines it (zero point 0, codes -2^(bits-1) .. 2^(bits-1) - 1, the largest |w| at the edge "
          "of the grid): a tensor of w's shape holding whole numbers. Checked at 2, 4 and 8 bits against the "
          "kit's symmetric grid.",
          _symmetric_round,
          {"no_clamp": "some codes fall outside the signed range of the grid: a symmetric grid is one code short "
                       "on the positive side, so the largest positive weight must be pinned to the top code.",
           "no_round": "codes must be whole numbers: each weight goes to its *nearest* code.",
           "wrong": "the scale is set by the largest |w|; work the 2-bit case of the hints (checks.hint) by hand "
                    "and compare with your function."},
          kind="code", uses="section 2: the codes of a real FFN weight at 3 bits, compared with torch's "
                            "fake_quantize_per_tensor_affine.",
          ladder=("A symmetric grid puts 0.0 at code 0 and spreads the codes evenly on both sides, so one number "
                  "(the scale) defines it, chosen so that the largest |w| reaches the edge of the grid.",
                  "The steps that usually go wrong: the scale must use the largest *absolute* value (a weight "
                  "may be more negative than the positive ones are large), and codes are rounded and then kept "
                  "within the signed range.",
                  "A smaller case: 2 bits (codes -2..1), w = (-0.6, 0.1, 0.3). The largest |w| is 0.6 and reaches "
                  "1.5 steps, so a step is 0.4; w / 0.4 = -1.5, 0.25, 0.75; rounded -2, 0, 1 (round half to even), "
                  "all within -2..1."))
def _check_symmetric_round(answer: Any) -> str | None:
    gen = torch.Generator().manual_seed(7)
    for bits in (2, 4, 8):
        w = torch.randn(16, 24, generator=gen)
        got = torch.as_tensor(attempt(answer, w, bits)).to(torch.float64)
        qmin, qmax = affine.qrange(bits, "symmetric")
        scale, zp = affine.choose_qparams_affine(w, "symmetric", w.shape, qmin, qmax)
        want = affine.quantize_affine(w, w.shape, scale, zp, qmin, qmax).to(torch.float64)
        if got.shape != want.shape:
            return "wrong"
        if not torch.equal(got, got.round()):
            return "no_round"
        if got.max() > 2 ** (bits - 1) - 1 or got.min() < -(2 ** (bits - 1)):
            return "no_clamp"
        if not torch.equal(got, want):
            return "wrong"
    return None


# --- 02.quantized_linear: an integer-only Linear layer --------------------------------------------------

def _quantized_linear_solution():
    def quantized_linear(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
        # int8 x int8 products summed in int32: widen before subtracting (uint8 - int wraps around)
        acc = (x_codes.to(torch.int32) - x_zp) @ w_codes.to(torch.int32).T
        acc = acc + torch.round(bias / (x_scale * w_scale)).to(torch.int32)  # bias at the sums' scale
        out = torch.round(acc * (x_scale * w_scale / out_scale)) + out_zp  # requantize to the output grid
        return torch.clamp(out, 0, 255).to(torch.uint8)
    return quantized_linear


def _ql_case(small: bool = False, zero_bias: bool = False) -> dict:
    """Golden inputs: 4 tokens, 64 inputs, 8 outputs; sums far beyond int16, some outputs past both grid ends."""
    gen = torch.Generator().manual_seed(11)
    n, k, m = (4, 8, 8) if small else (4, 64, 8)
    x_zp = 60
    if small:  # tiny codes: nothing can overflow even in int8, and nothing is clamped
        x_codes = x_zp + torch.randint(0, 4, (n, k), generator=gen)
        w_codes = torch.randint(-3, 4, (m, k), generator=gen)
    else:
        x_codes = torch.randint(0, 128, (n, k), generator=gen)
        w_codes = torch.randint(-127, 128, (m, k), generator=gen)
    w_scale = torch.rand(m, generator=gen) * 0.01 + 0.002
    bias = torch.randn(m, generator=gen) * (0 if zero_bias else 0.5)
    x_scale = 0.03
    acc = (x_codes - x_zp) @ w_codes.T
    real = acc * (x_scale * w_scale) + bias
    # The output grid is centred on the outputs; the real one covers their middle 70% only, so both ends
    # saturate somewhere; the small one covers 150%, so nothing is clamped.
    lo, hi = float(real.min()), float(real.max())
    out_scale = (hi - lo) * (1.5 if small else 0.7) / 255
    out_zp = 128 - round((lo + hi) / 2 / out_scale)
    return {"x_codes": x_codes.to(torch.uint8), "x_scale": x_scale, "x_zp": x_zp, "w_codes": w_codes.to(torch.int8),
            "w_scale": w_scale, "bias": bias, "out_scale": out_scale, "out_zp": out_zp}


def _ql_unclamped(case: dict) -> torch.Tensor:
    acc = (case["x_codes"].to(torch.int64) - case["x_zp"]) @ case["w_codes"].to(torch.int64).T
    scale = case["x_scale"] * case["w_scale"].to(torch.float64)
    acc = acc + torch.round(case["bias"].to(torch.float64) / scale).to(torch.int64)
    return torch.round(acc * (scale / case["out_scale"])).to(torch.int64) + case["out_zp"]


def _ql_run(answer: Any, case: dict) -> torch.Tensor:
    args = [case[k] for k in ("x_codes", "x_scale", "x_zp", "w_codes", "w_scale", "bias", "out_scale", "out_zp")]
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    return torch.as_tensor(attempt(answer, *args))


def _within_one(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and int((got.to(torch.int64) - want).abs().max()) <= 1


@exercise("02.quantized_linear",
          "Write quantized_linear(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp) -> uint8 "
          "output codes (tokens x outputs), computed in integers as section 7 derives it. x_codes: uint8 (tokens "
          "x inputs) on one grid (x_scale, x_zp); w_codes: int8 (outputs x inputs), symmetric, one scale per "
          "output (w_scale, a tensor); bias: float (outputs); the output grid is (out_scale, out_zp), codes "
          "0..255. Checked on 4 tokens x 64 inputs x 8 outputs whose sums do not fit in 16 bits and whose "
          "outputs pass both ends of the output grid; right within one code.",
          _quantized_linear_solution,
          {"overflow": "your sums overflowed: uint8 and int8 arithmetic wraps around (200 - 210 is 246 in uint8, "
                       "100 x 100 does not fit in int8, a sum of many products not in int16). Widen the codes to "
                       "32-bit integers before you subtract or multiply anything.",
           "bias_scale": "with a zero bias you are right, so the bias is added at the wrong scale: the int32 sums "
                         "count steps of x_scale * w_scale, and the bias must be expressed in those same steps "
                         "before it is added.",
           "no_clamp": "outputs beyond the output grid must saturate at 0 or 255; a cast to uint8 alone wraps "
                       "them around instead.",
           "no_out_zp": "the output codes are off by the output zero point: a code counts steps from the code of "
                        "0.0, so the requantized sums must be shifted by it.",
           "float_out": "return the output *codes* as an integer tensor (0..255, uint8), not floats and not the "
                        "dequantized outputs.",
           "wrong": "follow section 7's worked example step by step (codes, int32 sum, bias, requantize) on the "
                    "small case of the hints, and compare each step with your function's."},
          kind="code",
          uses="section 7: IntegerLinear runs a real MiniLM Linear through it; its codes are compared with "
               "torch's int8 Linear and its outputs with fp32.",
          ladder=("Every float is S (q - Z); put that into y = sum x_i w_i + b and the float scales come out of "
                  "the sum as one factor. What is left inside is a sum of integer products, which an int8 kernel "
                  "computes exactly; one multiply at the end moves it to the output grid.",
                  "The steps that usually go wrong: integer overflow (uint8 - int wraps, and products need 32 "
                  "bits), the bias (it must be counted in the same steps as the sums), and the output (shift by "
                  "its zero point, saturate at the ends, then the uint8 cast).",
                  "A smaller case: one input x = 0.4 on S_x = 0.1, Z_x = 2 is code 6; one weight 0.3 on S_w = 0.05 "
                  "is code 6; sum (6 - 2) x 6 = 24 steps of 0.005; bias 0.02 is 4 such steps, 28 in all (0.14). "
                  "On an output grid S_y = 0.01, Z_y = 100: 0.14 / 0.01 = 14 steps, code 114."))
def _check_quantized_linear(answer: Any) -> str | None:
    case = _ql_case()
    got = _ql_run(answer, case)
    unclamped = _ql_unclamped(case)
    want = torch.clamp(unclamped, 0, 255)
    if got.shape != want.shape:
        return "wrong"
    if torch.is_floating_point(got):
        return "float_out"
    if _within_one(got, want):
        return None
    return _ql_why(answer, got.to(torch.int64), case, unclamped)


def _ql_why(answer: Any, got: torch.Tensor, case: dict, unclamped: torch.Tensor) -> str:
    """Name the mistake: first by what the output looks like, then by rerunning on simpler inputs."""
    inside = (unclamped >= 0) & (unclamped <= 255)
    off = (got - unclamped)[~inside]
    # Right wherever no clamping was needed, and past the ends the unclamped value itself (or its uint8 wrap).
    if (bool((~inside).any()) and int((got - unclamped)[inside].abs().max()) <= 1
            and bool(((off.abs() <= 1) | ((off + 1) % 256 <= 2)).all())):
        return "no_clamp"
    if _within_one(got, torch.clamp(unclamped - case["out_zp"], 0, 255)):
        return "no_out_zp"
    no_bias = _ql_case(zero_bias=True)
    if _within_one(_ql_run(answer, no_bias).to(torch.int64), torch.clamp(_ql_unclamped(no_bias), 0, 255)):
        return "bias_scale"
    small = _ql_case(small=True, zero_bias=True)
    if _within_one(_ql_run(answer, small).to(torch.int64), torch.clamp(_ql_unclamped(small), 0, 255)):
        return "overflow"  # right when the numbers are tiny, wrong when they are real: they wrapped around
    return "wrong"




# --- predictions and a written question -----------------------------------------------------------------

prediction("02.one_bit_shrink",
           "with every Linear weight at 1 bit (plus its scales), how many times smaller is the whole model?",
           unit="x")
prediction("02.kmeans_error_ratio",
           "at 2 bits, k-means's mean |error| on block 0's feed-forward weight, as a fraction of linear "
           "quantization's (per tensor)?")
prediction("02.int8_speedup_b32",
           "how many times faster than fp32 is torch's int8 model at batch 32, on this machine?", unit="x")
written("02.why_speedup",
        "torch's int8 model stores its Linear weights in a quarter of the bytes. Why is its measured batch-32 "
        "speed-up far from 4x, and what would have to change for it to come closer?")
