import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps
import torch
import torch.nn.utils.prune as torch_prune

from labkit.core import parts
from labkit.sparse import sparse


def _layer(shape=(48, 64), sparsity=0.8, seed=0):
    torch.manual_seed(seed)
    return sparse.sparsify(torch.randn(shape), sparsity)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("fmt", sparse.FORMATS)
def test_every_format_round_trips_exactly_and_matches_its_size_formula(fmt, sparsity):
    w = _layer(sparsity=sparsity)
    if fmt == "2:4":
        w = sparse.mask_2_4(w)
    for values in sparse.VALUES:
        expect = w if values == "f32" else sparse.quantized(w)
        for comp in sparse.COMPRESSORS:
            blob = sparse.encode(w, fmt, values, comp)
            assert isinstance(blob, bytes)
            assert torch.equal(sparse.decode(blob), expect), (fmt, values, comp)
        assert len(sparse.encode(w, fmt, values)) == sparse.predicted_bytes(w.shape, int((w != 0).sum()), fmt, values)


def test_csr_bytes_are_scipys_arrays_plus_a_fixed_header():
    w = _layer((40, 300), 0.9)
    ref = sps.csr_matrix(w.numpy())
    header = sparse._OUTER.size + sparse._INNER.size + sparse._COUNT.size
    payload = ref.indptr.astype(np.int32).nbytes + ref.indices.astype(np.int32).nbytes + ref.data.nbytes
    assert len(sparse.encode(w, "csr")) == header + payload
    # The smallest index types: 300 columns need uint16, nnz = 1200 row pointers need uint16.
    assert len(sparse.encode(w, "csr_min")) == header + 2 * (40 + 1) + 2 * ref.nnz + 4 * ref.nnz


def test_torch_csr_and_scipy_agree_with_the_decoded_matrix():
    w = _layer((33, 20), 0.7)
    back = sparse.decode(sparse.encode(w, "csr_min", compress="zlib"))
    assert torch.equal(back, torch.from_numpy(sps.csr_matrix(w.numpy()).toarray()))
    c = sparse.to_csr(w)
    assert c.crow_indices().dtype == torch.int32
    assert torch.equal(c.to_dense(), back)


def test_int8_values_keep_zeros_and_err_by_at_most_half_a_step():
    w = _layer((16, 32), 0.5)
    codes, scale = sparse.quantize_rows(w)
    back = sparse.quantized(w)
    assert torch.equal(back == 0, w == 0) or bool(((back == 0) | (w != 0)).all())
    assert (back - w).abs().max() <= torch.from_numpy(scale).max() / 2 + 1e-7
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 127


def test_magnitude_mask_matches_torch_prune():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(3))
    lin = torch.nn.Linear(20, 30)
    with torch.no_grad():
        lin.weight.copy_(w)
    torch_prune.l1_unstructured(lin, "weight", amount=0.6)
    assert torch.equal(sparse.magnitude_mask(w, 0.6), lin.weight_mask.bool())


def test_2_4_mask_keeps_two_of_every_four():
    w = sparse.mask_2_4(torch.randn(8, 16))
    assert sparse.is_2_4(w) and int((w != 0).sum()) == 8 * 16 // 2
    assert not sparse.is_2_4(torch.ones(2, 8))


def test_break_even_is_where_the_format_stops_costing_more_than_dense():
    shape = (384, 1536)
    n = shape[0] * shape[1]
    for fmt in ("coo", "coo_min", "csr", "csr_min", "bitmask"):
        for values in sparse.VALUES:
            s = sparse.break_even(shape, fmt, values)
            nnz = int(round((1 - s) * n))
            dense = sparse.predicted_bytes(shape, n, "dense", values)
            assert sparse.predicted_bytes(shape, nnz, fmt, values) <= dense
            assert sparse.predicted_bytes(shape, nnz + 1, fmt, values) > dense
    assert sparse.break_even(shape, "bitmask") == pytest.approx(1 / 32, abs=1e-3)
    assert sparse.break_even(shape, "csr") == pytest.approx(0.5, abs=1e-2)


def test_format_sizes_reports_real_bytes_and_exact_round_trips():
    w = _layer((64, 64), 0.9)
    df = sparse.format_sizes(w)
    assert df["round_trip_exact"].all()
    row = df[(df["format"] == "csr") & (df["values"] == "f32") & (df["compress"] == "-")].iloc[0]
    assert row["bytes"] == len(sparse.encode(w, "csr"))
    assert not df[df["format"] == "2:4"]["holds_w"].any()  # 90% unstructured is not a 2:4 pattern
    fmt, comp, size = sparse.best_format(w, "int8")
    assert size == len(sparse.encode(w, fmt, "int8", comp))


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 3, 4)])
def test_non_matrices_are_refused(bad):
    with pytest.raises(ValueError, match="2-D"):
        sparse.encode(bad)
    with pytest.raises(ValueError, match="2-D"):
        sparse.format_sizes(bad)


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5])
def test_sparsity_outside_0_1_is_refused(s, tiny_model):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sparse.sparsify(torch.ones(2, 2), s)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sparse.to_sparse(tiny_model, s)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sparse.sparsity_view(s)


def test_unknown_format_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="csr_min"):
        sparse.encode(torch.ones(2, 2), "csc")
    with pytest.raises(ValueError, match="mask_2_4"):
        sparse.encode(torch.ones(2, 4), "2:4")


def test_sparse_linear_matches_the_dense_pruned_layer():
    lin = torch.nn.Linear(24, 12)
    with torch.no_grad():
        lin.weight.copy_(sparse.sparsify(lin.weight, 0.75))
    s = sparse.SparseLinear.from_linear(lin)
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(s(x), lin(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(s.dense_weight(), lin.weight.detach())


def test_to_sparse_returns_a_new_model_that_predicts_like_masked_dense(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    sm = sparse.to_sparse(tiny_model, 0.8, which="encoder")
    pm = sparse.pruned_dense(tiny_model, 0.8, which="encoder")
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())  # not mutated
    assert sum(isinstance(m, sparse.SparseLinear) for m in sm.modules()) == len(sparse.linear_layers(tiny_model))
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(sm(input_ids=ids).logits, pm(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    assert sparse.linear_layers(tiny_model, "ffn") == [n for n in sparse.linear_layers(tiny_model)
                                                       if "intermediate" in n or n.endswith("output.dense")
                                                       and "attention" not in n]


def test_model_artifact_round_trips_the_sparse_weights(tiny_model):
    sm = sparse.to_sparse(tiny_model, 0.9, which="ffn")
    blob = sparse.model_artifact(sm, "csr_min")
    tensors = sparse.read_artifact(blob)
    name = sparse.linear_layers(tiny_model, "ffn")[0]
    assert torch.equal(tensors[name + ".weight"], sm.get_submodule(name).dense_weight())
    assert len(blob) < len(sparse.model_artifact(sparse.to_sparse(tiny_model, 0.0, which="ffn"), "dense"))


def test_matmul_times_and_crossover():
    df = sparse.matmul_times((32, 16), densities=(1.0, 0.1), tokens=8, repeats=2)
    assert list(df["density"]) == [1.0, 0.1] and (df[list(sparse.BACKENDS)] > 0).all().all()
    fake = df.assign(dense=[1.0, 1.0], torch_csr=[2.0, 0.5])
    assert sparse.crossover(fake) == 0.1
    assert sparse.crossover(fake.assign(torch_csr=[2.0, 2.0])) is None


def test_sparsity_view_gives_bytes_and_times():
    v = sparse.sparsity_view(0.9, layer_shape=(32, 64), tokens=8)
    assert set(v["sizes"]["format"]) == set(sparse.FORMATS) and v["times"]["dense"] > 0


def test_dictionary_code_reconstructs_with_k_atoms_per_row(tiny_model):
    layer = sparse.linear_layers(tiny_model, "ffn")[0]  # 64 x 32
    coded = sparse.dictionary_code(tiny_model, layer, n_atoms=16, k=4)
    mod = coded.get_submodule(layer)
    assert isinstance(mod, sparse.CodedLinear)
    assert int((mod.codes != 0).sum(1).max()) <= 4
    x = torch.randn(5, 32)
    torch.testing.assert_close(mod(x), x @ mod.weight().T + mod.bias, rtol=1e-4, atol=1e-5)
    w = tiny_model.get_submodule(layer).weight
    err_small = sparse.relative_error(w, mod.weight())
    err_big = sparse.relative_error(w, sparse.dictionary_code(tiny_model, layer, 16, 16).get_submodule(layer).weight())
    assert err_big < err_small < 1.0
    assert isinstance(tiny_model.get_submodule(layer), torch.nn.Linear)  # original untouched


def test_dictionary_code_refuses_bad_k_and_layers(tiny_model):
    layer = sparse.linear_layers(tiny_model, "ffn")[0]
    with pytest.raises(ValueError, match="n_atoms"):
        sparse.dictionary_code(tiny_model, layer, n_atoms=4, k=8)
    with pytest.raises(ValueError, match="linear_layers"):
        sparse.dictionary_code(tiny_model, "bert.embeddings", 4, 2)


def test_coded_bytes_formula():
    assert sparse.coded_bytes((1536, 384), 64, 8) == 64 * 384 * 4 + 1536 * 8 * (1 + 4)


def test_bytes_curve_is_real_encoded_bytes():
    curve = sparse.bytes_curve((16, 32), sparsities=(0.0, 0.9))
    w = sparse._random_layer((16, 32), 0.1)
    got = curve.query("sparsity == 0.9 and format == 'bitmask'")["bytes"].iloc[0]
    assert got == len(sparse.encode(w, "bitmask"))
    dense = curve.query("format == 'dense'")["bytes"]
    assert dense.nunique() == 1  # dense costs the same at every sparsity


def test_interpolated_crossover_lies_between_the_last_win_and_the_first_loss():
    df = pd.DataFrame({"density": [0.01, 0.1, 1.0], "dense": [1.0, 1.0, 1.0],
                       "torch_csr": [0.5, 2.0, 8.0], "scipy_csr": [2.0, 2.0, 2.0]})
    # log speedups: ln 2 at 0.01, -ln 2 at 0.1 -> crosses halfway in log density
    assert sparse.crossover(df, interpolate=True) == pytest.approx(10 ** -1.5)
    assert sparse.crossover(df, "scipy_csr", interpolate=True) is None


def _my_csr(dense):
    """A learner-style CSR encoder (int64 indices, like torch's default)."""
    keep = dense != 0
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(keep.sum(1), 0)])
    return dense[keep], keep.nonzero()[:, 1], ptr


def test_to_sparse_with_my_encoder_builds_the_same_csr_layers(tiny_model):
    ref = sparse.to_sparse(tiny_model, 0.8, which="encoder")
    mine = sparse.to_sparse(tiny_model, 0.8, which="encoder", encoder=_my_csr)
    for name in sparse.linear_layers(tiny_model):
        a, b = ref.get_submodule(name), mine.get_submodule(name)
        assert b.col_indices.dtype == torch.int32 and b.crow_indices.dtype == torch.int32
        assert torch.equal(a.dense_weight(), b.dense_weight())
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(mine(input_ids=ids).logits, ref(input_ids=ids).logits)


@pytest.mark.parametrize("bad, match", [
    (lambda d: (d.flatten(), torch.arange(d.numel()), torch.arange(d.shape[0] + 1)), "decode|CSR"),
    (lambda d: (_my_csr(d)[0], _my_csr(d)[1], _my_csr(d)[2][1:]), "rows \\+ 1"),
    (lambda d: d, "three arrays"),
    (lambda d: (_my_csr(d)[0], _my_csr(d)[1].float(), _my_csr(d)[2]), "integer"),
])
def test_a_broken_encoder_is_a_clear_error(tiny_model, bad, match):
    with pytest.raises(ValueError, match=match):
        sparse.to_sparse(tiny_model, 0.8, which="ffn", encoder=bad)


def test_header_size_and_as_bytes_give_the_payload_of_encode():
    w = _layer((12, 20), 0.7)
    keep = (w != 0).flatten()
    mask = np.packbits(keep.numpy())
    blob = sparse.encode(w, "bitmask")
    assert blob[sparse.header_size("bitmask"):] == sparse.as_bytes(mask, w.flatten()[keep])
    v, c, p = _my_csr(w)
    assert blob != (csr := sparse.encode(w, "csr"))
    assert csr[sparse.header_size("csr"):] == sparse.as_bytes(p.int(), c.int(), v)
    assert sparse.as_bytes(b"ab", np.zeros(2, np.uint8)) == b"ab\x00\x00"


def test_dictionary_sweeps_refuse_the_test_split(tiny_model, tokenizer):
    layer = sparse.linear_layers(tiny_model, "ffn")[0]
    with pytest.raises(ValueError, match="validation"):
        sparse.dictionary_tradeoff(tiny_model, tokenizer, layer, [(8, 2)], split="test")
    with pytest.raises(ValueError, match="validation"):
        sparse.dictionary_view(tiny_model, tokenizer, layer, 8, 2, split="test")


def test_dictionary_tradeoff_gives_intervals_and_a_paired_difference(tiny_model, tokenizer):
    layer = sparse.linear_layers(tiny_model, "ffn")[0]
    df = sparse.dictionary_tradeoff(tiny_model, tokenizer, layer, [(8, 2)], limit=40)
    row = df.iloc[0]
    assert row["coded_lo"] <= row["coded_accuracy"] <= row["coded_hi"] and row["n"] == 40
    assert row["diff_lo"] <= row["coded_minus_pruned"] <= row["diff_hi"] and 0 <= row["p_value"] <= 1


# --- every family ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [f.name for f in parts.FAMILIES])
def test_to_sparse_converts_the_ffn_layers_of_every_family(family, tokenizer):
    model = parts.tiny_classifier(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ffn = sparse.linear_layers(model, "ffn")
    assert ffn == list(parts.linears(model, "ffn")) and len(ffn) == 2 * len(parts.blocks(model))
    sm = sparse.to_sparse(model, 0.9)
    assert [n for n, m in sm.named_modules() if isinstance(m, sparse.SparseLinear)] == ffn
    for name in ffn:
        w = model.get_submodule(name).weight
        assert sm.get_submodule(name).values.numel() == w.numel() - round(0.9 * w.numel()), name
    pm = sparse.pruned_dense(model, 0.9)
    inputs = parts.feed(model, dict(tokenizer(["a quiet, lovely film", "dull"], padding=True, return_tensors="pt")))
    with torch.no_grad():
        torch.testing.assert_close(sm(**inputs).logits, pm(**inputs).logits, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", [f.name for f in parts.FAMILIES])
def test_linear_layers_come_from_the_parts_map(family):
    model = parts.tiny_classifier(family)
    assert sparse.linear_layers(model) == list(parts.linears(model, "blocks"))
    every = sparse.linear_layers(model, "all")
    assert set(parts.head_linears(model)) <= set(every) and set(sparse.linear_layers(model)) < set(every)


def test_dictionary_code_keeps_the_layers_dtype():
    model = parts.tiny_classifier("DistilBERT").double()
    layer = sparse.linear_layers(model, "ffn")[0]
    coded = sparse.dictionary_code(model, layer, n_atoms=16, k=4).get_submodule(layer)
    assert coded.dictionary.dtype == coded.codes.dtype == coded.bias.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["BERT", "DistilBERT"])
def test_sparse_layers_stay_on_the_gpu(family, tokenizer):
    model = parts.tiny_classifier(family).cuda()
    inputs = parts.feed(model, dict(tokenizer(["a quiet film"], return_tensors="pt").to("cuda")))
    sm = sparse.to_sparse(model, 0.9, encoder=_my_csr)
    if sm.device.type == "cuda":  # else torch has no CUDA CSR matmul here, and to_sparse warned
        with torch.no_grad():
            torch.testing.assert_close(sm(**inputs).logits, sparse.pruned_dense(model, 0.9)(**inputs).logits,
                                       rtol=1e-3, atol=1e-4)
    layer = sparse.linear_layers(model, "ffn")[0]
    coded = sparse.dictionary_code(model, layer, 16, 4)
    assert coded.get_submodule(layer).codes.device.type == "cuda"
    with torch.no_grad():
        assert coded(**inputs).logits.shape == (1, 2)
