"""Each targeted hint of notebook 02's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import torch

from labkit.course import checks
from labkit.course.exercises import GENERIC_HINTS, nb02


def _scale(w, bits):
    return w.abs().max() / ((2 ** bits - 1) / 2)


# --- scale_and_zero_point, each with one real mistake -------------------------------------------------------

def sz_levels(lo, hi, bits):
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / 2 ** bits
    return scale, torch.round(-lo / scale)


def sz_not_rounded(lo, hi, bits):
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, -lo / scale


def sz_no_widen(lo, hi, bits):  # MIT-style without the clamp: fine when the range straddles 0, wrong otherwise
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.round(-lo / scale)


def sz_sign(lo, hi, bits):
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.round(lo / scale)


def sz_python_builtins(lo, hi, bits):  # fine on one range, fails on a tensor of ranges
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.round(-lo / scale)


# --- linear_quantize ----------------------------------------------------------------------------------------

def lq_no_clamp(x, scale, zp, bits):
    return (torch.round(x / scale) + zp).to(torch.int32)


def lq_off_by_one(x, scale, zp, bits):
    return torch.clamp(torch.round(x / scale) + zp, 0, 2 ** bits).to(torch.int32)


def lq_zp_subtracted(x, scale, zp, bits):
    return torch.clamp(torch.round(x / scale) - zp, 0, 2 ** bits - 1).to(torch.uint8)


def lq_truncates(x, scale, zp, bits):
    return torch.clamp((x / scale).int() + zp, 0, 2 ** bits - 1).to(torch.uint8)


def lq_float(x, scale, zp, bits):
    return torch.clamp(torch.round(x / scale) + zp, 0, 2 ** bits - 1)


def lq_int8(x, scale, zp, bits):
    return torch.clamp(torch.round(x / scale) + zp, 0, 2 ** bits - 1).to(torch.int8)


def lq_in_place(x, scale, zp, bits):
    return x.div_(scale).round_().add_(zp).clamp_(0, 2 ** bits - 1).to(torch.uint8)


# --- quantized_linear ---------------------------------------------------------------------------------------

def ql_uint8_wrap(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
    acc = (x_codes - x_zp).to(torch.int32) @ w_codes.to(torch.int32).T  # subtracts in uint8: wraps below x_zp
    acc = acc + torch.round(bias / (x_scale * w_scale)).to(torch.int32)
    return torch.clamp(torch.round(acc * (x_scale * w_scale / out_scale)) + out_zp, 0, 255).to(torch.uint8)


def ql_int16_sums(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
    acc = ((x_codes.to(torch.int16) - x_zp).unsqueeze(1) * w_codes.to(torch.int16)).sum(-1, dtype=torch.int16)
    acc = acc.to(torch.int32) + torch.round(bias / (x_scale * w_scale)).to(torch.int32)
    return torch.clamp(torch.round(acc * (x_scale * w_scale / out_scale)) + out_zp, 0, 255).to(torch.uint8)


def ql_bias_unscaled(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
    acc = (x_codes.to(torch.int32) - x_zp) @ w_codes.to(torch.int32).T
    acc = acc + torch.round(bias).to(torch.int32)  # the float bias added as if it were in sum steps
    return torch.clamp(torch.round(acc * (x_scale * w_scale / out_scale)) + out_zp, 0, 255).to(torch.uint8)


def ql_no_clamp(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
    acc = (x_codes.to(torch.int32) - x_zp) @ w_codes.to(torch.int32).T
    acc = acc + torch.round(bias / (x_scale * w_scale)).to(torch.int32)
    return (torch.round(acc * (x_scale * w_scale / out_scale)) + out_zp).to(torch.int32)


def ql_no_out_zp(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
    acc = (x_codes.to(torch.int32) - x_zp) @ w_codes.to(torch.int32).T
    acc = acc + torch.round(bias / (x_scale * w_scale)).to(torch.int32)
    return torch.clamp(torch.round(acc * (x_scale * w_scale / out_scale)), 0, 255).to(torch.uint8)


def ql_float_out(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
    acc = (x_codes.to(torch.int32) - x_zp) @ w_codes.to(torch.int32).T
    acc = acc + torch.round(bias / (x_scale * w_scale)).to(torch.int32)
    return torch.clamp(torch.round(acc * (x_scale * w_scale / out_scale)) + out_zp, 0, 255)


def ql_float_matmul(x_codes, x_scale, x_zp, w_codes, w_scale, bias, out_scale, out_zp):
    """Right within a code: the float path (dequantize, fp32 Linear, quantize) lands on the same grid."""
    x = (x_codes.float() - x_zp) * x_scale
    w = w_codes.float() * w_scale.unsqueeze(1)
    y = torch.nn.functional.linear(x, w, bias)
    return torch.clamp(torch.round(y / out_scale) + out_zp, 0, 255).to(torch.uint8)


MISTAKES = [
    ("02.scale_zero_point", "levels", lambda: (4 / 256, 64)),
    ("02.scale_zero_point", "zero_sign", lambda: (4 / 255, -64)),
    ("02.scale_and_zero_point", "levels", lambda: sz_levels),
    ("02.scale_and_zero_point", "zp_not_rounded", lambda: sz_not_rounded),
    ("02.scale_and_zero_point", "no_widen", lambda: sz_no_widen),
    ("02.scale_and_zero_point", "zp_sign", lambda: sz_sign),
    ("02.scale_and_zero_point", "scalar_only", lambda: sz_python_builtins),
    ("02.linear_quantize", "no_clamp", lambda: lq_no_clamp),
    ("02.linear_quantize", "qmax_off_by_one", lambda: lq_off_by_one),
    ("02.linear_quantize", "zp_sign", lambda: lq_zp_subtracted),
    ("02.linear_quantize", "truncates", lambda: lq_truncates),
    ("02.linear_quantize", "float_dtype", lambda: lq_float),
    ("02.linear_quantize", "signed_dtype", lambda: lq_int8),
    ("02.symmetric_round", "no_clamp", lambda: lambda w, bits: torch.round(w / _scale(w, bits))),
    ("02.symmetric_round", "no_round", lambda: lambda w, bits: torch.clamp(w / _scale(w, bits), -2 ** (bits - 1),
                                                                           2 ** (bits - 1) - 1)),
    ("02.quantized_linear", "overflow", lambda: ql_uint8_wrap),
    ("02.quantized_linear", "bias_scale", lambda: ql_bias_unscaled),
    ("02.quantized_linear", "no_clamp", lambda: ql_no_clamp),
    ("02.quantized_linear", "no_out_zp", lambda: ql_no_out_zp),
    ("02.quantized_linear", "float_out", lambda: ql_float_out),
    ("02.size_4bit", "no_params", lambda: 1536 * 384 // 2),
]



def test_int16_sums_overflow_too():
    assert checks.diagnose("02.quantized_linear", ql_int16_sums) == checks.get("02.quantized_linear").hint("overflow")


def test_float_path_agrees_within_one_code():
    assert checks.diagnose("02.quantized_linear", ql_float_matmul) is None


def test_mutating_linear_quantize_gets_the_generic_hint():
    assert checks.diagnose("02.linear_quantize", lq_in_place) == GENERIC_HINTS["mutated"]


def test_mit_golden_codes_are_reproduced():
    """MIT 6.5940 lab 2's 2-bit golden tensor (signed codes -2..1, zero point -1), shifted to our 0..3 grid."""
    mine = checks.solution("02.linear_quantize")(nb02._MIT_X, 1 / 3, 1, 2)
    assert mine.dtype == torch.uint8 and torch.equal(mine.long(), nb02._MIT_CODES)
    assert torch.equal(mine.long(), nb02._MIT_CODES)  # and back on the signed grid: theirs
    assert torch.equal(mine.long() - 2, nb02._MIT_CODES - 2)
