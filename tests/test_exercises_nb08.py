"""Each targeted hint of notebook 08's exercises, reached by the mistake it names (test_checks.py runs the table)."""

import inspect

import torch

from labkit.course import checks
from labkit.course.exercises.nb08 import _constant_rtn, _golden_awq, _golden_gptq, _golden_rtn
from labkit.lm import weightonly as wo


def _grid(w, bits, group, steps=None, rounding=torch.round, codes_only=False):
    g = w.reshape(w.shape[0], -1, group)
    lo = g.amin(dim=-1, keepdim=True)
    scale = (g.amax(dim=-1, keepdim=True) - lo) / (steps or 2 ** bits - 1)
    codes = torch.clamp(rounding((g - lo) / scale), 0, 2 ** bits - 1)
    return (codes if codes_only else lo + codes * scale).reshape(w.shape)


def _per_row(w, bits, group):
    return _grid(w, bits, w.shape[1])


def _down_columns(w, bits, group):
    return _grid(w.T.contiguous(), bits, group).T  # groups of consecutive outputs (the golden's rows allow it)


def _symmetric(w, bits, group):
    g = w.reshape(w.shape[0], -1, group)
    scale = g.abs().amax(dim=-1, keepdim=True) / (2 ** (bits - 1) - 1)
    return (torch.clamp(torch.round(g / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale).reshape(w.shape)


def _too_many_steps(w, bits, group):
    return _grid(w, bits, group, steps=2 ** bits)


def _floor(w, bits, group):
    return _grid(w, bits, group, rounding=torch.floor)


def _codes(w, bits, group):
    return _grid(w, bits, group, codes_only=True)


def _in_place(w, bits, group):
    w.copy_(_grid(w, bits, group))
    return w


def _unguarded(w, bits, group):
    return _grid(w, bits, group)  # right on every group with a range, NaN on a constant one


def _step(column, rest, u_row, scale, offset, bits, clamp=True):
    codes = torch.round((column - offset) / scale)
    return offset + (torch.clamp(codes, 0, 2 ** bits - 1) if clamp else codes) * scale


def _no_correction(column, rest, u_row, scale, offset, bits):
    return _step(column, rest, u_row, scale, offset, bits), rest


def _no_divide(column, rest, u_row, scale, offset, bits):
    q = _step(column, rest, u_row, scale, offset, bits)
    return q, rest - (column - q)[:, None] * u_row[None, 1:]


def _wrong_sign(column, rest, u_row, scale, offset, bits):
    q = _step(column, rest, u_row, scale, offset, bits)
    return q, rest + ((column - q) / u_row[0])[:, None] * u_row[None, 1:]


def _diagonal(column, rest, u_row, scale, offset, bits):
    q = _step(column, rest, u_row, scale, offset, bits)
    return q, rest - ((column - q) / u_row[0])[:, None] * u_row[None, :-1]


def _no_clamp(column, rest, u_row, scale, offset, bits):
    q = _step(column, rest, u_row, scale, offset, bits, clamp=False)
    return q, rest - ((column - q) / u_row[0])[:, None] * u_row[None, 1:]


def _rest_in_place(column, rest, u_row, scale, offset, bits):
    q = _step(column, rest, u_row, scale, offset, bits)
    rest -= ((column - q) / u_row[0])[:, None] * u_row[None, 1:]
    return q, rest


def _only_q(column, rest, u_row, scale, offset, bits):
    return _step(column, rest, u_row, scale, offset, bits)


def _awq(sign=1.0, unscale=True, on_weights=False, last=1):
    """AWQ's search written with one step changed, as a learner might (scales not centred: any multiple rounds alike)."""
    def awq_scales(weight, absmean, x, bits, group_size, rounding, grid=20):
        mean, best = absmean.clamp(min=1e-5), None
        for k in range(grid + last):
            s = mean ** (sign * k / grid)
            new = rounding(weight * s, bits, group_size) / (s if unscale else 1)
            err = ((new - weight) ** 2).mean() if on_weights else ((x @ (new - weight).T) ** 2).mean()
            if best is None or err < best[0]:
                best = (err, s, k / grid)
        return best[1], best[2]
    return awq_scales


def _awq_alpha_only(weight, absmean, x, bits, group_size, rounding, grid=20):
    return _awq()(weight, absmean, x, bits, group_size, rounding, grid)[1]


MISTAKES = [
    ("08.packed_bytes", "codes_only", lambda: 576 * 576 // 2),
    ("08.packed_bytes", "byte_per_code", lambda: 576 * 576 + 576 * 18 * 4),
    ("08.packed_bytes", "fp32_params", lambda: 576 * 576 // 2 + 576 * 18 * 8),
    ("08.packed_bytes", "fp32", lambda: 576 * 576 * 4),
    ("08.group_rtn", "per_row", lambda: _per_row),
    ("08.group_rtn", "wrong_axis", lambda: _down_columns),
    ("08.group_rtn", "symmetric", lambda: _symmetric),
    ("08.group_rtn", "steps", lambda: _too_many_steps),
    ("08.group_rtn", "floor", lambda: _floor),
    ("08.group_rtn", "codes", lambda: _codes),
    ("08.group_rtn", "mutated", lambda: _in_place),
    ("08.group_rtn", "constant", lambda: _unguarded),
    ("08.gptq_column", "no_correction", lambda: _no_correction),
    ("08.gptq_column", "no_divide", lambda: _no_divide),
    ("08.gptq_column", "sign", lambda: _wrong_sign),
    ("08.gptq_column", "diagonal", lambda: _diagonal),
    ("08.gptq_column", "no_clamp", lambda: _no_clamp),
    ("08.gptq_column", "mutated", lambda: _rest_in_place),
    ("08.gptq_column", "wrong_type", lambda: _only_q),
    ("08.awq_scales", "inverse", lambda: _awq(sign=-1.0)),
    ("08.awq_scales", "no_unscale", lambda: _awq(unscale=False)),
    ("08.awq_scales", "weight_error", lambda: _awq(on_weights=True)),
    ("08.awq_scales", "no_last", lambda: _awq(last=0)),
    ("08.awq_scales", "wrong_type", lambda: _awq_alpha_only),
]


def test_group_rtn_reference_is_torch_fake_quantize_per_group():
    rtn_groups = checks.solution("08.group_rtn")
    for w, bits, group in _golden_rtn():
        rows = w.reshape(-1, group)  # one group per row, in row-major order
        lo, hi = rows.amin(1), rows.amax(1)
        scale = (hi - lo) / (2 ** bits - 1)
        ref = torch.fake_quantize_per_channel_affine(rows, scale, -lo / scale, 0, 0, 2 ** bits - 1)
        torch.testing.assert_close(rtn_groups(w, bits, group), ref.reshape(w.shape), rtol=0, atol=1e-5)
        torch.testing.assert_close(rtn_groups(w, bits, group), wo.rtn(w, bits, group, half=False), rtol=0, atol=1e-6)


def test_the_golden_weights_tell_every_rtn_mistake_apart():
    want = [checks.solution("08.group_rtn")(w, b, g) for w, b, g in _golden_rtn()]
    for wrong in (_per_row, _symmetric, _too_many_steps, _floor, _codes):
        outs = [wrong(w, b, g) for w, b, g in _golden_rtn()]
        assert any(not torch.allclose(o, r, atol=1e-5) for o, r in zip(outs, want)), wrong.__name__


def test_gptq_column_reference_is_labkits_step_and_the_golden_column_leaves_its_grid():
    args = _golden_gptq()
    q, rest = checks.solution("08.gptq_column")(*args)
    want_q, want_rest = wo.gptq_column(*args)
    assert torch.equal(q, want_q) and torch.equal(rest, want_rest)
    column, _, _, scale, offset, bits = args
    codes = torch.round((column - offset) / scale)
    assert (codes < 0).any() and (codes > 2 ** bits - 1).any()  # so that a missing clamp shows


def test_learner_step_in_labkits_loop_gives_labkits_gptq():
    torch.manual_seed(0)
    w, x = torch.randn(16, 64), torch.randn(256, 64)
    H = x.T @ x / len(x)
    mine = checks.solution("08.gptq_column")
    torch.testing.assert_close(wo.gptq(w, H, 3, 32, step=mine), wo.gptq(w, H, 3, 32), rtol=0, atol=1e-6)


def test_group_rtn_reference_keeps_a_constant_group_as_it_is():
    w, bits, group = _constant_rtn()
    got = checks.solution("08.group_rtn")(w, bits, group)
    assert torch.isfinite(got).all()
    assert torch.equal(got[1], w[1]) and torch.equal(got[2, 16:], w[2, 16:])  # no range: nothing moves
    torch.testing.assert_close(got, wo.rtn(w, bits, group, half=False), rtol=0, atol=1e-6)


def test_awq_reference_is_labkits_search_and_an_uncentred_one_passes_too():
    mine = checks.solution("08.awq_scales")
    for case in _golden_awq():
        (s, alpha), (s_ref, alpha_ref) = mine(*case[:5], wo.rtn, case[5]), wo.awq_scales(*case[:5], wo.rtn, case[5])
        assert alpha == alpha_ref
        torch.testing.assert_close(s, s_ref)
    assert checks.diagnose("08.awq_scales", _awq()) is None  # scales off by one factor round the same
    assert {wo.awq_scales(*c[:5], wo.rtn, c[5])[1] for c in _golden_awq()} >= {1.0}  # so that a missing end shows


def test_the_awq_reference_is_a_long_exercise():
    body = inspect.getsource(checks.solution("08.awq_scales")).splitlines()[1:]
    code = [line for line in body if line.strip() and not line.strip().startswith(("#", "return"))]
    assert len(code) >= 8
