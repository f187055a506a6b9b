"""Each targeted hint of notebook 04's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import inspect

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


def _linear(zero=True, ints=True, scale="both", bias_on=True, flat=False, int8_store=True, per_tensor=False):
    class Layer(torch.nn.Module):
        def __init__(self, linear):
            super().__init__()
            w = linear.weight.detach().float()
            s = w.abs().max().expand(w.shape[0]) / 127 if per_tensor else w.abs().amax(dim=1) / 127
            codes = torch.clamp(torch.round(w / s[:, None]), -127, 127)
            self.w_codes, self.w_scale = (codes.to(torch.int8) if int8_store else codes.to(torch.int16)), s
            self.bias = linear.bias

        def forward(self, x):
            rows = x.reshape(-1, x.shape[-1])
            xs, xz = _qparams()(rows)
            codes = torch.clamp(torch.round(rows / xs) + xz, 0, 255)
            shifted = codes - xz if zero else codes
            if ints:
                acc = (shifted.to(torch.int32) @ self.w_codes.to(torch.int32).T).float()
                y = acc * {"both": xs * self.w_scale, "x_only": xs, "w_only": self.w_scale}[scale]
            else:  # dequantize both, then a float product
                y = (shifted * xs) @ (self.w_codes.float() * self.w_scale[:, None]).T
            if bias_on and self.bias is not None:
                y = y + self.bias.detach()
            return y if flat else y.reshape(*x.shape[:-1], -1)
    return Layer


MISTAKES = [
    ("04.zero_code_negative_row", "not_widened", lambda: 319),
    ("04.zero_code_negative_row", "bottom", lambda: 0),
    ("04.dynamic_qparams", "per_batch", lambda: _qparams(per_batch=True)),
    ("04.dynamic_qparams", "levels", lambda: _qparams(steps=256)),
    ("04.dynamic_qparams", "zero_not_exact", lambda: _qparams(widen=False)),
    ("04.dynamic_qparams", "zero_point_not_integer", lambda: _qparams(rounded=False)),
    ("04.dynamic_qparams", "shape", lambda: _qparams(keepdim=False)),
    ("04.dynamic_int8_linear", "weights_not_int8", lambda: _linear(int8_store=False)),
    ("04.dynamic_int8_linear", "float_matmul", lambda: _linear(ints=False)),
    ("04.dynamic_int8_linear", "no_zero_point", lambda: _linear(zero=False)),
    ("04.dynamic_int8_linear", "weight_per_tensor", lambda: _linear(per_tensor=True)),
    ("04.dynamic_int8_linear", "wrong_scale", lambda: _linear(scale="x_only")),
    ("04.dynamic_int8_linear", "no_bias", lambda: _linear(bias_on=False)),
    ("04.dynamic_int8_linear", "shape", lambda: _linear(flat=True)),
]


def test_scale_from_weights_only_is_a_wrong_scale():
    assert checks.diagnose("04.dynamic_int8_linear", _linear(scale="w_only")) == checks.get(
        "04.dynamic_int8_linear").hint("wrong_scale")


def test_integer_codes_held_in_floats_still_count_as_integer_math():
    class FloatCodes(checks.solution("04.dynamic_int8_linear")):
        def forward(self, x):
            rows = x.reshape(-1, x.shape[-1])
            xs, xz = checks.solution("04.dynamic_qparams")(rows)
            codes = torch.clamp(torch.round(rows / xs) + xz, 0, 255) - xz
            y = (codes.double() @ self.w_codes.double().T).float() * (xs * self.w_scale)
            y = y if self.bias is None else y + self.bias
            return y.reshape(*x.shape[:-1], -1)
    assert checks.diagnose("04.dynamic_int8_linear", FloatCodes) is None


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
    with torch.no_grad():
        ref = lin(x)
        mine = checks.solution("04.dynamic_int8_linear")(lin)(x)
        theirs = quant_int8.dynamic_int8(torch.nn.Sequential(lin))[0](x)
    rel = lambda y: float((y - ref).norm() / ref.norm())  # noqa: E731
    assert rel(mine) < 0.02 and rel(theirs) < 0.02
    assert float((mine - theirs).norm() / ref.norm()) < 0.03


def test_the_long_exercise_is_long():
    source = inspect.getsource(checks.solution("04.dynamic_int8_linear"))
    code = [line for line in source.splitlines() if line.strip() and not line.strip().startswith(("#", "def ",
                                                                                                 "class "))]
    assert len(code) >= 8
