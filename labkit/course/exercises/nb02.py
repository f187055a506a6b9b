"""Notebook 02 (quantization): scale and zero point, integer codes, an integer-only Linear, the bytes of 4 bits."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given
from labkit.quant import affine


def _qparams(lo, hi, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The asymmetric `bits`-bit grid of the ranges [lo, hi], by the kit's one primitive."""
    return affine.choose_qparams_affine_with_min_max(lo, hi, "asymmetric", *affine.qrange(bits))


def _scale_zero_point() -> tuple[float, int]:
    scale, zp = _qparams(-1.0, 3.0, 8)
    return float(scale), int(zp)


@exercise("02.scale_zero_point",
          "Values range from -1.0 to 3.0. For an 8-bit asymmetric grid (codes 0..255), give (scale, zero_point).",
          _scale_zero_point,
          {"levels": "the grid has 256 codes but 255 *steps* between them: divide the range by 2^8 - 1.",
           "zero_sign": "the zero point is the code that stands for 0.0: it is -min / scale, a positive code here.",
           "wrong": "scale spreads the range over 255 steps; the zero point is round(-min / scale)."})
def _check_scale_zero_point(answer: Any) -> str | None:
    scale, zp = given(answer)
    want_scale, want_zp = _scale_zero_point()
    if not close(scale, want_scale, 1e-6):
        return "levels" if close(scale, 4.0 / 256, 1e-6) else "wrong"
    if int(round(float(zp))) == -want_zp:
        return "zero_sign"
    return None if int(round(float(zp))) == want_zp else "wrong"


# --- 02.scale_and_zero_point: the grid of a range, as a function ------------------------------------------

def _scale_and_zero_point_solution():
    def scale_and_zero_point(lo: torch.Tensor, hi: torch.Tensor, bits: int):
        lo = torch.clamp(lo, max=0.0)  # widen the range to hold 0.0 ...
        hi = torch.clamp(hi, min=0.0)  # ... so that 0.0 gets a code of its own
        scale = (hi - lo) / (2 ** bits - 1)
        zero_point = torch.round(-lo / scale)
        return scale, zero_point
    return scale_and_zero_point


# Several ranges at once (one per row of a weight, as fake_quantize calls it): straddling 0, symmetric,
# wholly positive and wholly negative (those two must first be widened to include 0).
_RANGES_LO = torch.tensor([-1.0, -0.5, 0.25, -2.0, -0.3, -0.01])
_RANGES_HI = torch.tensor([3.0, 0.5, 2.0, -0.5, 0.9, 0.02])


def _ranges_want(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _qparams(_RANGES_LO, _RANGES_HI, bits)


@exercise("02.scale_and_zero_point",
          "Write scale_and_zero_point(lo, hi, bits) -> (scale, zero_point) for the asymmetric grid 0..2^bits - 1. "
          "lo and hi are tensors (one range per row); widen each range to include 0.0 first, then "
          "scale = (hi - lo) / (2^bits - 1) and zero_point = round(-lo / scale).",
          _scale_and_zero_point_solution,
          {"levels": "2^bits codes have 2^bits - 1 steps between them: divide the range by 2**bits - 1, not 2**bits.",
           "zp_not_rounded": "the zero point is a code, so a whole number: round it (torch.round).",
           "no_widen": "a range that does not contain 0.0 must first be widened to include it (lo = min(lo, 0), "
                       "hi = max(hi, 0)); otherwise 0.0 has no code, and the zero point falls outside 0..2^bits - 1.",
           "zp_sign": "the zero point is the code that stands for 0.0: zero_point = -lo / scale (a code >= 0), "
                      "not lo / scale.",
           "scalar_only": "lo and hi are tensors holding one range per row: use torch.clamp / torch.minimum / "
                          "torch.round, which work element by element, not Python's min, max or round.",
           "wrong": "widen [lo, hi] to include 0, scale = (hi - lo) / (2**bits - 1), zero_point = torch.round(-lo / scale)."},
          kind="code",
          uses="section 3: fake_quantize_rows gives every weight row of the real baseline its grid with it; "
               "section 7's IntegerLinear makes its input and output grids with it.")
def _check_scale_and_zero_point(answer: Any) -> str | None:
    # 1. One range, as 0-d tensors: the worked example (-1.0 .. 3.0, 8 bits).
    out = attempt(answer, torch.tensor(-1.0), torch.tensor(3.0), 8)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mistake("wrong_type", "return a pair (scale, zero_point)")
    # 2. Six ranges at once, at 8 and at 2 bits.
    for bits in (8, 2):
        try:
            scale, zp = attempt(answer, _RANGES_LO.clone(), _RANGES_HI.clone(), bits)
        except (TypeError, RuntimeError):
            return "scalar_only"
        scale = torch.as_tensor(scale, dtype=torch.float64).expand(len(_RANGES_LO))
        zp = torch.as_tensor(zp, dtype=torch.float64).expand(len(_RANGES_LO))
        want_scale, want_zp = (t.to(torch.float64).reshape(-1) for t in _ranges_want(bits))
        if not torch.allclose(scale, want_scale, rtol=1e-5):
            if torch.allclose(scale, want_scale * (2 ** bits - 1) / 2 ** bits, rtol=1e-5):
                return "levels"
            raw = (_RANGES_HI - _RANGES_LO).to(torch.float64)
            if torch.allclose(scale, raw / (2 ** bits - 1), rtol=1e-5) or torch.allclose(scale, raw / 2 ** bits, rtol=1e-5):
                return "no_widen"
            return "wrong"
        if not torch.equal(zp, zp.round()):
            return "zp_not_rounded"
        if torch.equal(zp, -want_zp) and bool((want_zp != 0).any()):
            return "zp_sign"
        if not torch.equal(zp, want_zp):
            return "wrong"
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
          "Write linear_quantize(x, scale, zero_point, bits) -> integer codes: round(x / scale) + zero_point, "
          "clamped to the grid 0..2^bits - 1, returned as an integer tensor (torch.uint8 for bits <= 8). "
          "scale and zero_point may be numbers or tensors that broadcast against x (one per row).",
          _linear_quantize_solution,
          {"no_clamp": "some codes fall outside 0..2^bits - 1: values beyond the range must land on the end codes "
                       "(torch.clamp after rounding).",
           "qmax_off_by_one": "the largest code of a b-bit grid is 2**bits - 1 (3 for 2 bits, 255 for 8): clamp to "
                              "that, not to 2**bits.",
           "zp_sign": "the zero point is *added* to the rounded value (code = round(x / scale) + zero_point); "
                      "dequantizing subtracts it.",
           "truncates": "round to the nearest integer (torch.round); .int() / .long() / floor cut towards zero "
                        "or down, so 0.6 becomes 0 instead of 1.",
           "float_dtype": "the values are right, but codes are integers: return an integer tensor "
                          "(`.to(torch.uint8)`), which is what an int8 file or kernel stores.",
           "signed_dtype": "torch.int8 holds -128..127, so codes 128..255 wrapped around to negative numbers: "
                           "the unsigned grid 0..255 needs torch.uint8 (or a wider integer type).",
           "wrong": "codes = torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1).to(torch.uint8)."},
          kind="code",
          uses="section 3: fake_quantize_rows rounds every Linear weight of the real baseline with it, then "
               "compared weight for weight with the kit's fake_quantize.")
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
          "Write symmetric_codes(w, bits): per-tensor symmetric codes (zero point 0, scale = max|w| / ((2^bits - 1) / 2)).",
          _symmetric_round,
          {"no_clamp": "some codes fall outside [-2^(bits-1), 2^(bits-1) - 1]: clamp after rounding.",
           "no_round": "codes must be whole numbers: round w / scale to the nearest integer before clamping.",
           "wrong": "divide by the scale, round to the nearest integer, then clamp to [-2^(bits-1), 2^(bits-1) - 1]."},
          kind="code", uses="section 2: the codes of a real FFN weight at 3 bits, compared with torch's "
                            "fake_quantize_per_tensor_affine.")
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
          "output codes (tokens x outputs). x_codes: uint8 (tokens x inputs) on one grid; w_codes: int8 "
          "(outputs x inputs), symmetric, one scale per output (w_scale); bias: float. Sum (x_codes - x_zp) * "
          "w_codes in int32, add the bias quantized at scale x_scale * w_scale, requantize the sums to the "
          "output grid (multiply by x_scale * w_scale / out_scale, round, add out_zp) and clamp to 0..255.",
          _quantized_linear_solution,
          {"overflow": "your sums overflowed: uint8 and int8 arithmetic wraps around (200 - 210 is 246 in uint8, "
                       "and 100 x 100 does not fit in int8 or a sum of many in int16). Widen first: "
                       "x_codes.to(torch.int32) - x_zp, w_codes.to(torch.int32), then multiply and sum.",
           "bias_scale": "with a zero bias you are right, so the bias is added at the wrong scale: the int32 sums "
                         "count steps of x_scale * w_scale, so the bias must be too: "
                         "round(bias / (x_scale * w_scale)) before adding it to the sums.",
           "no_clamp": "outputs beyond the output grid must saturate at 0 or 255: torch.clamp(..., 0, 255) "
                       "before .to(torch.uint8) (a cast alone wraps around).",
           "no_out_zp": "the output codes are off by the output zero point: after requantizing, add out_zp "
                        "(code = round(real / out_scale) + out_zp).",
           "float_out": "return the output *codes* as an integer tensor: clamp to 0..255, then .to(torch.uint8) "
                        "(not floats, and not the dequantized outputs).",
           "wrong": "acc = (x_codes.to(int32) - x_zp) @ w_codes.to(int32).T + round(bias / (x_scale * w_scale)); "
                    "codes = clamp(round(acc * x_scale * w_scale / out_scale) + out_zp, 0, 255) as uint8."},
          kind="code",
          uses="section 7: IntegerLinear runs a real MiniLM Linear through it; its codes are compared with "
               "torch's int8 Linear and its outputs with fp32.")
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


# --- 02.size_4bit ---------------------------------------------------------------------------------------

def _size_4bit() -> int:
    numel = 1536 * 384
    return affine.packed_bytes(numel, 4, numel // 64, scale_bytes=4, zero_point_bytes=1)


@exercise("02.size_4bit",
          "Bytes of a 1536x384 weight at 4 bits, asymmetric, groups of 64 (packed codes + float32 scale "
          "+ one byte zero point per group)?",
          _size_4bit,
          {"no_params": "you counted the packed codes only: every group of 64 also stores its scale and zero point.",
           "wrong": "codes: weights x 4 bits / 8; groups: 1536 rows x (384 / 64); each group stores 4 + 1 bytes."})
def _check_size_4bit(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 1536 * 384 // 2):
        return "no_params"
    return None if close(answer, _size_4bit()) else "wrong"
