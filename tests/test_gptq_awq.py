"""GPTQ and AWQ as their reference code runs them: IST-DASLab/gptq's `fasterquant` (act_order, static_groups,
sequential calibration) and mit-han-lab/llm-awq's block-wise scale search, folding and auto_clip.

The references are transcribed below line by line on small tensors (their quantizer swapped for labkit's grid),
and labkit's functions must give their results.
"""

import copy

import pytest
import torch

from labkit.lm import weightonly as wo


def fasterquant(W, H, bits, groupsize, blocksize=128, percdamp=.01, actorder=False, static_groups=False):
    """IST-DASLab/gptq gptq.py GPTQ.fasterquant, with `Quantizer.find_params` + `quantize` replaced by labkit's
    min-max offset grid (group_params) and the Cholesky steps in float64 as labkit's hessian_factor runs them."""
    class Quantizer:
        def find_params(self, x):
            self.scale, self.zero = wo.group_params(x, bits, x.shape[1])

    W, H = W.clone().float(), H.clone()
    columns = W.shape[1]
    quantizer = Quantizer()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        groups = []
        for i in range(0, columns, groupsize):
            quantizer = copy.deepcopy(quantizer)
            quantizer.find_params(W[:, i:(i + groupsize)])
            groups.append(quantizer)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    H = H.double()
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True).float()
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if not static_groups:
                if (i1 + i) % groupsize == 0:
                    quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)])
            else:
                idx = i1 + i
                if actorder:
                    idx = perm[idx]
                quantizer = groups[idx // groupsize]
            codes = torch.clamp(torch.round((w - quantizer.zero[:, 0]) / quantizer.scale[:, 0]), 0, 2 ** bits - 1)
            q = codes * quantizer.scale[:, 0] + quantizer.zero[:, 0]
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def _weight_and_hessian(out=48, n_in=256, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, n_in, generator=g) * torch.rand(n_in, generator=g) * 3  # uneven channels: act_order matters
    X[:, 5] = 0  # one input never seen: a dead column
    return torch.randn(out, n_in, generator=g), X.T @ X / tokens


@pytest.mark.parametrize("act_order,static_groups", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("blocksize", [None, 128])
def test_gptq_quantize_gives_fasterquants_weights(act_order, static_groups, blocksize):
    W, H = _weight_and_hessian()
    mine, scale, offset = wo.gptq_quantize(W, H, 3, 32, act_order=act_order, static_groups=static_groups,
                                           blocksize=blocksize)
    theirs = fasterquant(W, H, 3, 32, blocksize=blocksize or 32, actorder=act_order, static_groups=static_groups)
    assert torch.allclose(mine, theirs, atol=1e-5)
    if act_order and not static_groups:
        assert scale is None and offset is None  # groups of the new order: no contiguous grid describes them
    else:  # every weight sits on its own group's grid, in the weight's column order
        assert torch.allclose(wo.dequantize(wo.quantize_codes(mine, scale, offset, 3, 32), scale, offset, 32), mine,
                              atol=1e-5)


def test_gptq_quantize_at_blocksize_group_is_the_notebooks_column_loop():
    W, H = _weight_and_hessian(seed=1)
    H[5, 5] = 1e-3  # no dead column: the notebook's loop keeps those weights, fasterquant zeroes them
    Q, scale, offset = wo.gptq_quantize(W, H, 4, 32)
    Q2, scale2, offset2 = wo.gptq_columns(W, wo.hessian_factor(H), 4, 32, wo.gptq_column)
    assert torch.equal(Q, Q2) and torch.equal(scale, scale2) and torch.equal(offset, offset2)


def test_act_order_lowers_the_output_error_on_uneven_inputs():
    W, H = _weight_and_hessian(seed=2)
    err = {}
    for act in (False, True):
        Q = wo.gptq_quantize(W, H, 3, 32, act_order=act, static_groups=True)[0]
        d = (Q - W).double()
        err[act] = float(torch.einsum("oi,ij,oj->", d, H.double(), d))
    assert err[True] < err[False]


def test_gptq_quantize_refuses_a_bad_blocksize():
    W, H = _weight_and_hessian()
    with pytest.raises(ValueError, match="blocksize"):
        wo.gptq_quantize(W, H, 4, 32, blocksize=0)
