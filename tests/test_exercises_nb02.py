"""Each targeted hint of notebook 02's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import inspect
import warnings

import pytest
import torch

from labkit.course import checks
from labkit.course.exercises import GENERIC_HINTS, nb02, nb02_long


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
    ("02.widened_grid", "no_widen", lambda: (-1, 0.25)),
    ("02.widened_grid", "full_step", lambda: (0, 2 / 3)),
    ("02.scale_and_zero_point", "levels", lambda: sz_levels),
    ("02.scale_and_zero_point", "zp_not_rounded", lambda: sz_not_rounded),
    ("02.scale_and_zero_point", "no_widen", lambda: sz_no_widen),
    ("02.scale_and_zero_point", "zp_sign", lambda: sz_sign),
    ("02.scale_and_zero_point", "scalar_only", lambda: sz_python_builtins),
    ("02.scale_and_zero_point", "zero_range", lambda: sz_unguarded),
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
    ("02.kmeans_quantize", "wrong_size", lambda: lambda w, bits, iters: _km(w, bits + 1, iters)),
    ("02.kmeans_quantize", "shape", lambda: lambda w, bits, iters: (_km(w, bits, iters)[0],
                                                                    _km(w, bits, iters)[1].reshape(-1))),
    ("02.kmeans_quantize", "float_indices", lambda: lambda w, bits, iters: (_km(w, bits, iters)[0],
                                                                            _km(w, bits, iters)[1].float())),
    ("02.kmeans_quantize", "empty_nan", lambda: km_nan),
    ("02.kmeans_quantize", "no_update", lambda: lambda w, bits, iters: _km(w, bits, 0)),
    ("02.kmeans_quantize", "stale_indices", lambda: km_stale),
    ("02.fake_quant_ste", "codes_not_values", lambda: lambda w, s, z, b: torch.clamp(torch.round(w / s) + z, 0,
                                                                                       2 ** b - 1)),
    ("02.fake_quant_ste", "forward", lambda: lambda w, s, z, b: (torch.round(w / s) - z) * s),
    ("02.fake_quant_ste", "detached", lambda: lambda w, s, z, b: _fq(w.detach(), s, z, b)),
    ("02.fake_quant_ste", "no_grad", lambda: _fq),
    ("02.fake_quant_ste", "not_clipped", lambda: lambda w, s, z, b: w + (_fq(w, s, z, b) - w).detach()),
]


def sz_unguarded(lo, hi, bits):  # right for every range but a row of zeros: 0 / 0
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.round(-lo / scale)


# --- kmeans_quantize ----------------------------------------------------------------------------------------

def _km(w, bits, iters):
    return checks.solution("02.kmeans_quantize")(w, bits, iters)


def km_nan(w, bits, iters):  # the mean of an empty cluster taken as it comes: 0 / 0
    values, k = w.reshape(-1), 2 ** bits
    codebook = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iters):
        nearest = (values[:, None] - codebook[None, :]).abs().argmin(dim=1)
        codebook = torch.zeros(k).index_add(0, nearest, values) / torch.bincount(nearest, minlength=k)
    return codebook, (values[:, None] - codebook[None, :]).abs().argmin(dim=1).reshape(w.shape)


def km_stale(w, bits, iters):  # the indices of the last assignment, before the last update
    values, k = w.reshape(-1), 2 ** bits
    codebook = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iters):
        nearest = (values[:, None] - codebook[None, :]).abs().argmin(dim=1)
        counts = torch.bincount(nearest, minlength=k)
        codebook = torch.where(counts > 0, torch.zeros(k).index_add(0, nearest, values) / counts.clamp(min=1),
                               codebook)
    return codebook, nearest.reshape(w.shape)


# --- fake_quant_ste -----------------------------------------------------------------------------------------

def _fq(w, scale, zp, bits):  # fake quantization with torch.round's own gradient: 0
    return (torch.clamp(torch.round(w / scale) + zp, 0, 2 ** bits - 1) - zp) * scale


def test_ste_detach_trick_with_clamped_range_is_right():
    """The other way the question allows: the value of the grid, the gradient of w clamped to the grid's range."""
    def ste(w, scale, zp, bits):
        inside = torch.clamp(w, (0 - zp) * scale, (2 ** bits - 1 - zp) * scale)
        return inside + (_fq(w, scale, zp, bits) - inside).detach()
    assert checks.diagnose("02.fake_quant_ste", ste) is None


def test_reference_ste_agrees_with_torchs_fake_quantize_gradient():
    x = torch.linspace(-3, 3, 41)
    mine, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_mine = checks.solution("02.fake_quant_ste")(mine, 0.1, 7, 4)
    out_theirs = torch.fake_quantize_per_tensor_affine(theirs, 0.1, 7, 0, 15)
    (out_mine * x).sum().backward()
    (out_theirs * x).sum().backward()
    assert torch.allclose(out_mine, out_theirs) and torch.equal(mine.grad, theirs.grad)


def test_kmeans_paper_case():
    codebook, indices = _km(nb02_long._KM_PAPER, 1, 3)
    assert torch.allclose(codebook, nb02_long._KM_PAPER_CODEBOOK) and torch.equal(indices, nb02_long._KM_PAPER_INDICES)


def test_kmeans_keeps_an_empty_centroid_in_place():
    codebook, _ = _km(nb02_long._KM_EMPTY, 2, 3)
    assert torch.allclose(codebook, torch.tensor([0.01, 10 / 3, 20 / 3, 10.0]))


def test_constant_range_has_zero_point_zero():
    scale, zp = checks.solution("02.scale_and_zero_point")(torch.zeros(3), torch.zeros(3), 8)
    assert bool((scale > 0).all()) and torch.equal(zp, torch.zeros(3))


def _code_lines(fn) -> list[str]:
    lines = [line.split("  #")[0].strip() for line in inspect.getsource(fn).splitlines()]
    return [line for line in lines if len(line) >= 8 and not line.startswith("#")]


def test_long_exercises_have_references_of_eight_lines_or_more():
    for key in ("02.kmeans_quantize", "02.fake_quant_ste"):
        assert len(_code_lines(checks.get(key).solution)) >= 8 + 2  # the two lines of the wrapper not counted


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


# --- the reference kernel against torch's own int8 Linear ------------------------------------------------------

# The float input, weight and bias of MIT 6.5940 lab 2's `test_quantized_fc` (mit-han-lab/efficientml.ai); they
# test a 2-bit version, here the same tensors go through 8-bit integer kernels and torch's int8 Linear.
MIT_X = torch.tensor([[0.6118, 0.7288, 0.8511, 0.2849, 0.8427, 0.7435, 0.4014, 0.2794],
                      [0.3676, 0.2426, 0.1612, 0.7684, 0.6038, 0.0400, 0.2240, 0.4237],
                      [0.6565, 0.6878, 0.4670, 0.3470, 0.2281, 0.8074, 0.0178, 0.3999],
                      [0.1863, 0.3567, 0.6104, 0.0497, 0.0577, 0.2990, 0.6687, 0.8626]])
MIT_W = torch.tensor([[1.2626e-01, -1.4752e-01, 8.1910e-02, 2.4982e-01, -1.0495e-01, -1.9227e-01, -1.8550e-01, -1.5700e-01],
                      [2.7624e-01, -4.3835e-01, 5.1010e-02, -1.2020e-01, -2.0344e-01, 1.0202e-01, -2.0799e-01, 2.4112e-01],
                      [-3.8216e-01, -2.8047e-01, 8.5238e-02, -4.2504e-01, -2.0952e-01, 3.2018e-01, -3.3619e-01, 2.0219e-01],
                      [8.9233e-02, -1.0124e-01, 1.1467e-01, 2.0091e-01, 1.1438e-01, -4.2427e-01, 1.0178e-01, -3.0941e-04],
                      [-1.8837e-02, -2.1256e-01, -4.5285e-01, 2.0949e-01, -3.8684e-01, -1.7100e-01, -4.5331e-01, -2.0433e-01],
                      [-2.0038e-01, -5.3757e-02, 1.8997e-01, -3.6866e-01, 5.5484e-02, 1.5643e-01, -2.3538e-01, 2.1103e-01],
                      [-2.6875e-01, 2.4984e-01, -2.3514e-01, 2.5527e-01, 2.0322e-01, 3.7675e-01, 6.1563e-02, 1.7201e-01],
                      [3.3541e-01, -3.3555e-01, -4.3349e-01, 4.3043e-01, -2.0498e-01, -1.8366e-01, -9.1553e-02, -4.1168e-01]])
MIT_B = torch.tensor([0.1954, -0.2756, 0.3113, 0.1149, 0.4274, 0.2429, -0.1721, -0.2502])


def _random_layer(seed, n=64, k=384, m=96):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen) * 2, torch.randn(m, k, generator=gen) * 0.05,
            torch.randn(m, generator=gen) * 0.1)


@pytest.mark.parametrize("case", ["mit", "random"])
def test_reference_kernel_agrees_with_torch_int8_linear_within_one_code(case):
    """The notebook's integer layer, by hand: 7-bit input codes, int8 weights per channel, an 8-bit output grid."""
    x, w, b = (MIT_X, MIT_W, MIT_B) if case == "mit" else _random_layer(0)
    y = torch.nn.functional.linear(x, w, b)
    sz = checks.solution("02.scale_and_zero_point")
    (x_scale, x_zp), (y_scale, y_zp) = sz(x.min(), x.max(), 7), sz(y.min(), y.max(), 8)
    x_scale, x_zp, y_scale, y_zp = float(x_scale), int(x_zp), float(y_scale), int(y_zp)
    w_scale = w.abs().amax(dim=1) / 127
    w_codes = torch.clamp(torch.round(w / w_scale[:, None]), -127, 127).to(torch.int8)
    x_codes = torch.clamp(torch.round(x / x_scale) + x_zp, 0, 127).to(torch.uint8)
    mine = checks.solution("02.quantized_linear")(x_codes, x_scale, x_zp, w_codes, w_scale, b, y_scale, y_zp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation
        from torch.ao.nn.quantized import Linear as QuantizedLinear

        ref = QuantizedLinear(w.shape[1], w.shape[0], dtype=torch.qint8)
        ref.set_weight_bias(torch.quantize_per_channel(w_codes * w_scale[:, None], w_scale.double(),
                                                       torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8), b)
        ref.scale, ref.zero_point = y_scale, y_zp
        x_q = torch.quantize_per_tensor((x_codes.float() - x_zp) * x_scale, x_scale, x_zp, torch.quint8)
        theirs = ref(x_q).int_repr()
    assert mine.dtype == theirs.dtype == torch.uint8
    assert int((mine.int() - theirs.int()).abs().max()) <= 1
    back = (mine.float() - y_zp) * y_scale  # and the floats it stands for are the fp32 Linear's, within a step
    assert float((back - y).abs().mean()) <= y_scale
