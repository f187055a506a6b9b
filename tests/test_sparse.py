import warnings

import numpy as np
import pytest
import scipy.sparse as sps
import torch

from labkit.core import parts
from labkit.prune.masks import magnitude_mask, two_four_mask
from labkit.quant import affine
from labkit.sparse import formats, layers, sparse


def _layer(shape=(48, 64), sparsity=0.8, seed=0):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return w * magnitude_mask(w, sparsity)


def _int8(w):
    codes, scale = formats.quantize_rows(w)
    return torch.from_numpy(codes.astype(np.float32) * scale[:, None])


# --- formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_every_format_round_trips_exactly(fmt, sparsity):
    w = _layer(sparsity=sparsity)
    if fmt == "2:4":
        w = w * two_four_mask(w)
    for values in formats.VALUES:
        arrays = formats.format_arrays(w, fmt, values)
        assert torch.equal(formats.decode(arrays, fmt, tuple(w.shape)), w if values == "f32" else _int8(w))
        assert formats.nbytes(arrays) == sum(a.nbytes for a in arrays.values())


def test_csr_arrays_are_scipys_and_their_bytes_follow_the_layout():
    w = _layer((40, 300), 0.9)
    ref = sps.csr_matrix(w.numpy())
    csr = formats.format_arrays(w, "csr")
    assert csr["row_ptr"].tobytes() == ref.indptr.astype(np.int32).tobytes()
    assert csr["col_indices"].tobytes() == ref.indices.astype(np.int32).tobytes()
    assert csr["values"].tobytes() == ref.data.tobytes()
    assert formats.nbytes(csr) == 4 * (40 + 1) + 8 * ref.nnz
    # the smallest index types: 300 columns need uint16, nnz = 1200 row pointers need uint16
    small = formats.format_arrays(w, "csr_min")
    assert small["row_ptr"].dtype == small["col_indices"].dtype == np.uint16
    assert formats.nbytes(small) == 2 * (40 + 1) + 2 * ref.nnz + 4 * ref.nnz


def test_bitmask_and_two_four_layouts():
    w = _layer((8, 16), 0.7)
    bits = formats.format_arrays(w, "bitmask")
    assert bits["mask"].tobytes() == np.packbits((w != 0).numpy()).tobytes()
    w24 = w * two_four_mask(w)
    packed = formats.format_arrays(w24, "2:4")
    assert packed["values"].nbytes == 8 * 16 // 2 * 4 and packed["positions"].nbytes == 8 * 16 // 2 * 2 // 8


def test_int8_rows_go_through_the_affine_primitive_and_keep_zeros():
    w = _layer((16, 32), 0.5)
    codes, scale = formats.quantize_rows(w)
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 127 and scale.shape == (16,)
    assert bool((torch.from_numpy(codes)[w == 0] == 0).all())
    block = affine.block_size_for(w, "channel")
    assert torch.equal(_int8(w), affine.fake_quantize_affine(w, "symmetric", block, -127, 127))
    assert (_int8(w) - w).abs().max() <= torch.from_numpy(scale).max() / 2 + 1e-7


@pytest.mark.parametrize("w, fmt, values, match", [
    (torch.ones(2, 4), "2:4", "f32", "two_four_mask"), (torch.ones(2, 6), "2:4", "f32", "multiple of 4"),
    (torch.ones(2, 2), "csc", "f32", "fmt"), (torch.ones(2, 2), "csr", "int4", "int8"),
])
def test_bad_format_input_says_what_to_do(w, fmt, values, match):
    with pytest.raises(ValueError, match=match):
        formats.format_arrays(w, fmt, values)


# --- CSR layers --------------------------------------------------------------------------------------

def _my_csr(dense):
    """A learner-style CSR encoder (int64 indices, like torch's default)."""
    keep = dense != 0
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(keep.sum(1), 0)])
    return dense[keep], keep.nonzero()[:, 1], ptr


def _masked(model, sparsity, filter_fn="ffn"):
    out = parts.clone(model)
    with torch.no_grad():
        for layer in parts.linears(out, filter_fn).values():
            layer.weight.mul_(magnitude_mask(layer.weight, sparsity))
    return out


def test_sparse_linear_matches_the_dense_pruned_layer_and_keeps_its_arrays():
    lin = torch.nn.Linear(24, 12)
    with torch.no_grad():
        lin.weight.mul_(magnitude_mask(lin.weight, 0.75))
    s = layers.SparseLinear(*layers.torch_csr(lin.weight.detach()), (12, 24), lin.bias)
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(s(x), lin(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(layers.dense_weight(s), lin.weight.detach())
    state = s.state_dict()
    assert state["values"].numel() == 12 * 24 - round(0.75 * 12 * 24) and state["col_indices"].dtype == torch.int32


def test_to_sparse_returns_a_new_model_that_predicts_like_masked_dense(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    sm = sparse.to_sparse(tiny_model, 0.8, "blocks")
    assert sum(isinstance(m, layers.SparseLinear) for m in sm.modules()) == len(parts.linears(tiny_model, "blocks"))
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(sm(input_ids=ids).logits, _masked(tiny_model, 0.8, "blocks")(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)
        for t in list(sm.parameters()) + list(sm.buffers()):  # write into every tensor of the returned model
            t.fill_(3)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_to_sparse_with_int8_values_keeps_the_int8_round_trip(tiny_model):
    sm = layers.to_sparse(tiny_model, 0.5, values="int8")
    for name, lin in parts.linears(tiny_model, "ffn").items():
        w = lin.weight.detach() * magnitude_mask(lin.weight, 0.5)
        assert torch.equal(layers.dense_weight(sm.get_submodule(name)), _int8(w))
    with pytest.raises(ValueError, match="int8"):
        layers.to_sparse(tiny_model, 0.5, values="int4")


def test_to_sparse_with_my_encoder_builds_the_same_csr_layers(tiny_model):
    ref = layers.to_sparse(tiny_model, 0.8, "blocks")
    mine = layers.to_sparse(tiny_model, 0.8, "blocks", encoder=_my_csr)
    for name in parts.linears(tiny_model, "blocks"):
        a, b = ref.get_submodule(name), mine.get_submodule(name)
        assert b.col_indices.dtype == torch.int32 and b.crow_indices.dtype == torch.int32
        assert torch.equal(layers.dense_weight(a), layers.dense_weight(b))


@pytest.mark.parametrize("bad, match", [
    (lambda d: (d.flatten(), torch.arange(d.numel()), torch.arange(d.shape[0] + 1)), "decode|CSR"),
    (lambda d: (_my_csr(d)[0], _my_csr(d)[1], _my_csr(d)[2][1:]), "rows \\+ 1"),
    (lambda d: d, "three arrays"),
    (lambda d: (_my_csr(d)[0], _my_csr(d)[1].float(), _my_csr(d)[2]), "integer"),
])
def test_a_broken_encoder_is_a_clear_error(tiny_model, bad, match):
    with pytest.raises(ValueError, match=match):
        layers.to_sparse(tiny_model, 0.8, encoder=bad)


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5])
def test_sparsity_outside_0_1_is_refused(s, tiny_model):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        layers.to_sparse(tiny_model, s)


def test_saved_file_holds_the_format_arrays_and_reads_back(tiny_model, tmp_path):
    sm = layers.to_sparse(tiny_model, 0.9)
    layers.save(sm, tmp_path / "m.npz", "csr_min")
    stored = np.load(tmp_path / "m.npz")
    name = next(iter(parts.linears(tiny_model, "ffn")))
    arrays = {k.rsplit(".", 1)[-1]: stored[k] for k in stored.files if k.startswith(f"{name}.weight.")}
    w = layers.dense_weight(sm.get_submodule(name))
    assert torch.equal(formats.decode(arrays, "csr_min", tuple(w.shape)), w)
    assert layers.saved_bytes(sm, "csr_min") == (tmp_path / "m.npz").stat().st_size
    assert layers.saved_bytes(sm, "csr_min") < layers.saved_bytes(sm, "dense")


# --- every family ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [f.name for f in parts.FAMILIES])
def test_to_sparse_converts_the_ffn_layers_of_every_family(family, tokenizer):
    model = parts.tiny_classifier(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ffn = list(parts.linears(model, "ffn"))
    sm = sparse.to_sparse(model, 0.9)
    assert [n for n, m in sm.named_modules() if isinstance(m, layers.SparseLinear)] == ffn
    for name in ffn:
        w = model.get_submodule(name).weight
        assert sm.get_submodule(name).values.numel() == w.numel() - round(0.9 * w.numel()), name
    inputs = parts.feed(model, dict(tokenizer(["a quiet, lovely film", "dull"], padding=True, return_tensors="pt")))
    with torch.no_grad():
        torch.testing.assert_close(sm(**inputs).logits, _masked(model, 0.9)(**inputs).logits, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["BERT", "DistilBERT"])
def test_sparse_layers_stay_on_the_gpu(family, tokenizer):
    model = parts.tiny_classifier(family).cuda()
    inputs = parts.feed(model, dict(tokenizer(["a quiet film"], return_tensors="pt").to("cuda")))
    with warnings.catch_warnings(record=True):
        sm = layers.to_sparse(model, 0.9, encoder=_my_csr)
    if parts.device_of(sm).type == "cuda":  # else torch has no CUDA CSR matmul here, and to_sparse warned
        with torch.no_grad():
            torch.testing.assert_close(sm(**inputs).logits, _masked(model, 0.9)(**inputs).logits, rtol=1e-3, atol=1e-4)
