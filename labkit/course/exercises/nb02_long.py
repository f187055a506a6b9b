"""Notebook 02's two long exercises: k-means (codebook) quantization of a weight, and a fake quantization whose
gradient passes straight through the rounding (the heart of quantization-aware training)."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, exercise

# --- 02.kmeans_quantize: a codebook of 2^bits values, learned from the weights ---------------------------


def _kmeans_solution():
    def kmeans_quantize(w: torch.Tensor, bits: int, iters: int):
        values = w.detach().reshape(-1).float()
        k = 2 ** bits
        codebook = torch.linspace(float(values.min()), float(values.max()), k)
        for _ in range(iters):
            # each value's nearest centroid, from a (values, k) table of distances
            nearest = (values[:, None] - codebook[None, :]).abs().argmin(dim=1)
            sums = torch.zeros(k).index_add(0, nearest, values)
            counts = torch.bincount(nearest, minlength=k)
            # a centroid that no value chose stays where it is (its mean would be 0 / 0)
            codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
        nearest = (values[:, None] - codebook[None, :]).abs().argmin(dim=1)
        return codebook, nearest.reshape(w.shape)
    return kmeans_quantize


# Worked on paper: 1 bit, centroids start at -1.0 and 1.1; -1.0 and -0.8 choose the first, the six others the
# second; the means -0.9 and 0.6 then keep every value where it was.
_KM_PAPER = torch.tensor([[-1.0, -0.8, 0.1, 0.2], [0.3, 0.9, 1.0, 1.1]])
_KM_PAPER_CODEBOOK = torch.tensor([-0.9, 0.6])
_KM_PAPER_INDICES = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
# One far value: the centroids that start between 0.02 and 10 are chosen by no value and must stay put.
_KM_EMPTY = torch.tensor([[0.0, 0.01], [0.02, 10.0]])


def _km_cases() -> list[tuple[torch.Tensor, int, int]]:
    gen = torch.Generator().manual_seed(5)
    return [(_KM_PAPER, 1, 3), (_KM_EMPTY, 2, 3), (torch.randn(8, 16, generator=gen) * 0.1, 2, 5),
            (torch.randn(4, 64, generator=gen) ** 3, 3, 4)]


@exercise("02.kmeans_quantize",
          "Write kmeans_quantize(w, bits, iters) -> (codebook, indices): k-means on the values of the weight w, "
          "with 2^bits centroids that start evenly spaced from w's smallest to its largest value, then exactly "
          "`iters` rounds of k-means, then each value's nearest centroid. codebook: a float tensor of 2^bits "
          "values; indices: an integer tensor of w's shape, so that codebook[indices] is w on the codebook. "
          "Checked on a 2x4 case worked on paper, one where some centroids are chosen by no value, and two "
          "random weights at 2 and 3 bits.",
          _kmeans_solution,
          {"wrong_size": "a b-bit index can name 2^b centroids: the codebook holds exactly that many values.",
           "shape": "indices must have w's shape, one index per weight, so that codebook[indices] rebuilds w.",
           "float_indices": "indices pick entries of the codebook, so they must be an integer tensor (torch.long "
                            "or uint8), not floats.",
           "empty_nan": "your codebook has nan in it: a centroid that no value chose has no mean (0 / 0). Such a "
                        "centroid keeps its position for the next round.",
           "no_update": "your codebook is still where the centroids started: each round must move every centroid "
                        "to the mean of the values that chose it.",
           "stale_indices": "some indices do not point at the nearest entry of the codebook you return: assign the "
                            "values once more after the last update, so that indices and codebook agree.",
           "wrong": "the centroids end elsewhere than they should. Run your rounds by hand on the 2x4 case of the "
                    "hints (checks.hint) and compare after each round."},
          kind="code",
          uses="section 3: the codebook of a real weight of the baseline; its bytes, and the model's validation "
               "accuracy, beside linear quantization at the same bits.",
          ladder=("Linear quantization puts its 2^b grid values at equal steps; k-means puts them where the weights "
                  "are dense. Each round has two halves: every value chooses its nearest centroid, then every "
                  "centroid moves to the mean of the values that chose it.",
                  "The steps that usually go wrong: comparing every value with every centroid needs a table of "
                  "shape (values, centroids), made by broadcasting; a centroid nobody chose must not become nan; "
                  "the indices you return must be recomputed against the final codebook.",
                  "A smaller case: the values 0, 1, 2, 9 at 1 bit start with centroids 0 and 9. Round 1: 0, 1 and 2 "
                  "choose 0 (2 is nearer to 0 than to 9), 9 chooses 9; means 1.0 and 9.0. Round 2 changes "
                  "nothing: codebook (1.0, 9.0), indices (0, 0, 0, 1)."))
def _check_kmeans(answer: Any) -> str | None:
    reference = _kmeans_solution()
    for w, bits, iters in _km_cases():
        out = attempt(answer, w.clone(), bits, iters)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Mistake("wrong_type", "return a pair (codebook, indices)")
        codebook, indices = (torch.as_tensor(t) for t in out)
        want_codebook, _ = reference(w, bits, iters)
        if codebook.numel() != 2 ** bits:
            return "wrong_size"
        codebook = codebook.reshape(-1).to(torch.float64)
        if bool(torch.isnan(codebook).any()):
            return "empty_nan"
        if indices.shape != w.shape:
            return "shape"
        if torch.is_floating_point(indices):
            return "float_indices"
        start = torch.linspace(float(w.min()), float(w.max()), 2 ** bits, dtype=torch.float64)
        if torch.allclose(codebook, start, atol=1e-6) and not torch.allclose(start, want_codebook.double()):
            return "no_update"
        if not torch.allclose(codebook, want_codebook.double(), rtol=1e-4, atol=1e-6):
            return "wrong"
        nearest = (w.reshape(-1, 1).double() - codebook[None, :]).abs().argmin(dim=1).reshape(w.shape)
        if not torch.equal(indices.long(), nearest):
            return "stale_indices"
    return None


# --- 02.fake_quant_ste: rounding forward, the gradient straight through --------------------------------------

def _ste_solution():
    class FakeQuantSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, scale, zero_point, bits):
            codes = torch.round(w / scale) + zero_point
            inside = (codes >= 0) & (codes <= 2 ** bits - 1)  # the values the grid holds without clamping
            ctx.save_for_backward(inside)
            codes = torch.clamp(codes, 0, 2 ** bits - 1)
            return (codes - zero_point) * scale

        @staticmethod
        def backward(ctx, grad_out):
            (inside,) = ctx.saved_tensors
            # rounding taken for the identity; a clamped value does not move the output, so it gets no gradient
            return grad_out * inside, None, None, None

    def fake_quant_ste(w, scale, zero_point, bits):
        return FakeQuantSTE.apply(w, scale, zero_point, bits)
    return fake_quant_ste


def _ste_cases() -> list[tuple[torch.Tensor, Any, Any, int]]:
    # On paper: 2 bits, scale 0.5, zero point 1, so the grid holds -0.5 .. 1.0; -2.0 and 1.6 are clamped.
    paper = (torch.tensor([-2.0, -0.4, -0.2, 0.0, 0.3, 0.7, 1.0, 1.6]), 0.5, 1, 2)
    # One 4-bit grid per row, set on the middle of each row so that both ends are clamped somewhere.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 32, generator=gen) * torch.tensor([0.1, 0.5, 1.0, 2.0, 0.05])[:, None]
    lo, hi = x.quantile(0.1, dim=1, keepdim=True), x.quantile(0.9, dim=1, keepdim=True)
    scale = (hi - torch.clamp(lo, max=0)) / 15
    zp = torch.round(-torch.clamp(lo, max=0) / scale)
    # values within half a step beyond either end round onto the grid yet lie outside its range: whether they
    # count as clamped is a convention, so the golden rows hold none of them
    low_edge, high_edge = (0 - zp) * scale, (15 - zp) * scale
    doubt = ((x < low_edge) & (x > low_edge - scale / 2)) | ((x > high_edge) & (x < high_edge + scale / 2))
    return [paper, (torch.where(doubt, torch.zeros_like(x), x), scale, zp, 4)]


def _fake_quant_want(x, scale, zp, bits) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.round(x / scale) + zp
    inside = (codes >= 0) & (codes <= 2 ** bits - 1)
    return (torch.clamp(codes, 0, 2 ** bits - 1) - zp) * scale, inside


@exercise("02.fake_quant_ste",
          "Write fake_quant_ste(w, scale, zero_point, bits) -> a float tensor of w's shape: forward, w on the "
          "asymmetric grid (codes 0..2^bits - 1) of scale and zero_point, back in float; backward, the gradient "
          "passes straight through the rounding, and is 0 for the values the grid clamped. scale and zero_point "
          "are numbers or tensors that broadcast against w. Use a torch.autograd.Function or a detach(). Checked "
          "on a paper case and on 5 rows with a grid each: the forward values and w's gradient.",
          _ste_solution,
          {"codes_not_values": "you returned the integer codes; QAT's forward pass needs the values they stand for, "
                               "back in float, so that the layer computes with weights of the right size.",
           "forward": "the forward values are not w on its grid: check the rounding, the clamping and the way back "
                      "to float on the paper case of the hints.",
           "detached": "your output carries no gradient at all: the whole computation was cut off from w (a "
                       "detach, .data or torch.no_grad around all of it). Only the rounding's part must be cut.",
           "no_grad": "w's gradient is 0 everywhere: torch.round's own derivative is 0, so the loss cannot move w. "
                      "The backward pass must treat the rounding as if it were the identity.",
           "not_clipped": "your gradient passes through everywhere, also for values the grid clamped; moving those "
                          "values a little does not change the output, so their gradient must be 0.",
           "wrong": "the gradient must equal the incoming gradient where the value lies within the grid and 0 where "
                    "it was clamped; compare with the paper case of the hints."},
          kind="code",
          uses="section 6: a weight parametrization built on it trains the real baseline for a few QAT steps; "
               "its accuracy is then set beside rounding alone.",
          ladder=("Rounding is a staircase: flat almost everywhere, so its true gradient is 0 and no training step "
                  "could move a weight. The straight-through estimator keeps the staircase for the forward value "
                  "and uses the slope of the identity for the backward pass, except where the grid clamps.",
                  "The step that usually goes wrong: the gradient. Either it is killed (round's derivative is 0, or "
                  "everything was detached), or it also flows through the clamped values. Two ways work: a custom "
                  "torch.autograd.Function whose backward masks the incoming gradient, or an expression whose value "
                  "is the rounded one and whose only differentiable part is w itself (clamped to the grid's range).",
                  "A smaller case: scale 1.0, zero point 0, 1 bit (codes 0 and 1). w = (-0.7, 0.4, 0.6, 3.0): "
                  "the forward gives (0, 0, 1, 1), since -0.7 and 3.0 are clamped; with an incoming gradient of 1 "
                  "everywhere, w's gradient is (0, 1, 1, 0)."))
def _check_fake_quant_ste(answer: Any) -> str | None:
    for x, scale, zp, bits in _ste_cases():
        w = x.clone().requires_grad_(True)
        out = attempt(answer, w, scale, zp, bits)
        want, inside = _fake_quant_want(x, scale, zp, bits)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            return "wrong"
        codes = torch.clamp(torch.round(x / scale) + zp, 0, 2 ** bits - 1)
        if torch.equal(out.detach().to(torch.float64), codes.to(torch.float64)):
            return "codes_not_values"
        if not torch.allclose(out.detach().float(), want, atol=1e-6):
            return "forward"
        if not out.requires_grad:
            return "detached"
        g = torch.linspace(0.5, 1.5, x.numel()).reshape(x.shape)  # an incoming gradient that is not all ones
        (out * g).sum().backward()
        grad = torch.zeros_like(x) if w.grad is None else w.grad
        if not bool(grad.abs().gt(0).any()):
            return "no_grad"
        if torch.allclose(grad, g) and not bool(inside.all()):
            return "not_clipped"
        if not torch.allclose(grad, g * inside, atol=1e-6):
            return "wrong"
    return None
