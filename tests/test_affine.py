"""labkit.quant.affine against torch's own quantization: observers' scales and zero points, quantized tensors."""

import warnings

import pytest
import torch

from labkit.quant import affine as A

torch.manual_seed(0)
W = torch.randn(16, 64) * torch.linspace(0.1, 3.0, 16)[:, None]  # rows with different ranges


def _torch_observer(cls, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated: here it is only the reference
        from torch.ao import quantization as tq
        return getattr(tq, cls)(**kw)


def test_per_tensor_asymmetric_is_torchs_minmax_observer_and_quantize_per_tensor():
    obs = _torch_observer("MinMaxObserver", dtype=torch.quint8)
    obs(W)
    ref_scale, ref_zp = obs.calculate_qparams()
    qmin, qmax = A.qrange(8)
    block = A.block_size_for(W, "tensor")
    scale, zp = A.choose_qparams_affine(W, "asymmetric", block, qmin, qmax)
    assert torch.equal(scale.reshape(()), ref_scale.reshape(())) and int(zp) == int(ref_zp)
    ref = torch.quantize_per_tensor(W, float(ref_scale), int(ref_zp), torch.quint8)
    codes = A.quantize_affine(W, block, scale, zp, qmin, qmax)
    assert codes.dtype == torch.uint8 and torch.equal(codes, ref.int_repr())
    assert torch.equal(A.dequantize_affine(codes, block, scale, zp), ref.dequantize())


def test_per_channel_symmetric_is_torchs_per_channel_observer():
    obs = _torch_observer("PerChannelMinMaxObserver", dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    obs(W)
    ref_scale, ref_zp = obs.calculate_qparams()
    qmin, qmax = A.qrange(8, "symmetric")
    block = A.block_size_for(W, "channel")
    scale, zp = A.choose_qparams_affine(W, "symmetric", block, qmin, qmax)
    assert torch.allclose(scale.reshape(-1), ref_scale.float(), rtol=0, atol=0) and not zp.any()
    ref = torch.quantize_per_channel(W, ref_scale, ref_zp, 0, torch.qint8)
    codes = A.quantize_affine(W, block, scale, zp, qmin, qmax)
    # torch's per-channel kernel multiplies by 1/scale where labkit divides: they part only on a value that lands
    # within float rounding of a tie between two codes, and then by one code.
    differ = codes.int() != ref.int_repr().int()
    ratio = W / scale
    assert codes.dtype == torch.int8 and (codes.int() - ref.int_repr().int()).abs().max() <= 1
    assert torch.all(((ratio.abs() % 1) - 0.5).abs()[differ] < 1e-4)
    same = ~differ
    assert torch.equal(A.dequantize_affine(codes, block, scale, zp)[same], ref.dequantize().float()[same])


@pytest.mark.parametrize("mapping", A.MAPPINGS)
def test_groups_are_per_tensor_grids_of_each_group(mapping):
    qmin, qmax = A.qrange(4, mapping)
    out = A.fake_quantize_affine(W, mapping, A.block_size_for(W, "group", 16), qmin, qmax)
    for r in range(W.shape[0]):
        for g in range(0, W.shape[1], 16):
            piece = W[r:r + 1, g:g + 16]
            alone = A.fake_quantize_affine(piece, mapping, piece.shape, qmin, qmax)
            assert torch.equal(out[r:r + 1, g:g + 16], alone)


def test_zero_is_exact_and_every_value_within_half_a_step():
    qmin, qmax = A.qrange(3)
    x = torch.tensor([[-1.0, -0.3, 0.0, 0.5, 3.0]])
    scale, zp = A.choose_qparams_affine(x, "asymmetric", x.shape, qmin, qmax)
    codes = A.quantize_affine(x, x.shape, scale, zp, qmin, qmax)
    back = A.dequantize_affine(codes, x.shape, scale, zp)
    assert back[0, 2] == 0.0 and (back - x).abs().max() <= scale / 2 + 1e-7


def test_float_zero_point_is_min_offset_and_range_as_it_is():
    x = torch.tensor([[0.5, 0.75, 1.0, 2.0]])  # all positive: an int zero point would widen the range to 0
    scale, offset = A.choose_qparams_affine(x, "asymmetric", x.shape, 0, 15, zero_point_domain="float")
    assert float(offset) == 0.5 and float(scale) == pytest.approx(1.5 / 15)
    codes = A.quantize_affine(x, x.shape, scale, offset, 0, 15, zero_point_domain="float")
    assert codes.tolist() == [[0, 2, 5, 15]]
    back = A.dequantize_affine(codes, x.shape, scale, offset, zero_point_domain="float")
    assert back[0, 0] == 0.5 and back[0, 3] == pytest.approx(2.0)


def test_restricted_symmetric_grid_is_minus_127_to_127():
    assert A.qrange(8, "symmetric", restricted=True) == (-127, 127)
    x = torch.tensor([[-2.0, 1.0, 0.5]])
    scale, zp = A.choose_qparams_affine(x, "symmetric", x.shape, -127, 127)
    assert float(scale) == pytest.approx(2.0 / 127)
    assert A.quantize_affine(x, x.shape, scale, zp, -127, 127).tolist() == [[-127, 64, 32]]


def test_constant_block_gets_the_smallest_scale_not_zero():
    x = torch.zeros(2, 8)
    scale, zp = A.choose_qparams_affine(x, "asymmetric", (1, 8), 0, 255)
    assert torch.all(scale == A.EPS)
    assert torch.equal(A.fake_quantize_affine(x, "asymmetric", (1, 8), 0, 255), x)


@pytest.mark.parametrize("bad, match", [
    (dict(block_size=(1, 48)), "does not divide"),
    (dict(block_size=(64,)), "one entry per dimension"),
    (dict(mapping="signed"), "Unknown mapping"),
    (dict(qmin=5, qmax=5), "qmin must be below qmax"),
])
def test_bad_arguments_say_what_to_use(bad, match):
    args = dict(mapping="asymmetric", block_size=(1, 64), qmin=0, qmax=255) | bad
    with pytest.raises(ValueError, match=match):
        A.choose_qparams_affine(W, args["mapping"], args["block_size"], args["qmin"], args["qmax"])


def test_bits_out_of_range_are_refused():
    for bits in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="bits must be"):
            A.qrange(bits)
