"""Each targeted hint of notebook 04's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import torch

from labkit.course import checks
from labkit.quant import int8 as quant_int8


def _range(x, widen=True):
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    return (lo.clamp(max=0), hi.clamp(min=0)) if widen else (lo, hi)


def _qparams(steps=255, widen=True, per_batch=False, rounded=True, keepdim=True):
    def qparams(x):
        lo, hi = _range(x, widen)
        if per_batch:
            lo, hi = lo.min().expand_as(lo), hi.max().expand_as(hi)
        scale = (hi - lo) / steps
        zp = -lo / scale
        zp = torch.round(zp) if rounded else zp
        return (scale, zp) if keepdim else (scale.flatten(), zp.flatten())
    return qparams


def _linear(zero=True, ints=True, scale="both", bias_on=True, transpose=False):
    def dynamic_linear(x, w_codes, w_scale, bias):
        xs, xz = _qparams()(x)
        codes = torch.clamp(torch.round(x / xs) + xz, 0, 255)
        shifted = codes - xz if zero else codes
        if ints:
            acc = (shifted.to(torch.int32) @ w_codes.to(torch.int32).T).float()
            y = acc * {"both": xs * w_scale, "x_only": xs, "w_only": w_scale}[scale]
        else:  # dequantize both, then a float product
            y = (shifted * xs) @ (w_codes.float() * w_scale[:, None]).T
        if bias_on and bias is not None:
            y = y + bias
        return y.T if transpose else y
    return dynamic_linear


MISTAKES = [
    ("04.dynamic_scale", "symmetric", lambda: 2.88 / 127),
    ("04.dynamic_scale", "levels", lambda: 4.08 / 256),
    ("04.dynamic_qparams", "per_batch", lambda: _qparams(per_batch=True)),
    ("04.dynamic_qparams", "levels", lambda: _qparams(steps=256)),
    ("04.dynamic_qparams", "zero_not_exact", lambda: _qparams(widen=False)),
    ("04.dynamic_qparams", "zero_point_not_integer", lambda: _qparams(rounded=False)),
    ("04.dynamic_qparams", "shape", lambda: _qparams(keepdim=False)),
    ("04.dynamic_linear", "float_matmul", lambda: _linear(ints=False)),
    ("04.dynamic_linear", "no_zero_point", lambda: _linear(zero=False)),
    ("04.dynamic_linear", "wrong_scale", lambda: _linear(scale="x_only")),
    ("04.dynamic_linear", "no_bias", lambda: _linear(bias_on=False)),
    ("04.dynamic_linear", "shape", lambda: _linear(transpose=True)),
]



def test_scale_from_weights_only_is_a_wrong_scale():
    assert checks.diagnose("04.dynamic_linear", _linear(scale="w_only")) == checks.get("04.dynamic_linear").hint(
        "wrong_scale")


def test_integer_codes_held_in_floats_still_count_as_integer_math():
    def float_codes(x, w_codes, w_scale, bias):
        xs, xz = checks.solution("04.dynamic_qparams")(x)
        codes = torch.clamp(torch.round(x / xs) + xz, 0, 255) - xz
        y = (codes.double() @ w_codes.double().T).float() * (xs * w_scale)
        return y if bias is None else y + bias
    assert checks.diagnose("04.dynamic_linear", float_codes) is None


def test_qparams_mutating_its_input_is_caught():
    def in_place(x):
        lo, hi = _range(x)
        x.sub_(lo)
        return (hi - lo) / 255, torch.round(-lo / ((hi - lo) / 255))
    assert checks.diagnose("04.dynamic_qparams", in_place) == checks.get("04.dynamic_qparams").hint("mutated")


def test_solution_matches_torch_dynamic_int8_and_float_within_tolerance():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(20, 64) * 2 + 0.3
    w = lin.weight.detach()
    scale = w.abs().amax(dim=1) / 127  # the notebook's int8_weight: symmetric, one scale per channel
    codes = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    with torch.no_grad():
        ref = lin(x)
        mine = checks.solution("04.dynamic_linear")(x, codes, scale, lin.bias)
        theirs = quant_int8.dynamic_int8(torch.nn.Sequential(lin))[0](x)
    rel = lambda y: float((y - ref).norm() / ref.norm())  # noqa: E731
    assert rel(mine) < 0.02 and rel(theirs) < 0.02
    assert float((mine - theirs).norm() / ref.norm()) < 0.03
