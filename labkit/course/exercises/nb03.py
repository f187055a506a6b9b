"""Notebook 03 (pruning): a magnitude mask by hand and in code, removing an attention head, what is left after
pruning, what a head costs, zeros and speed."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from labkit.course.exercises import Mistake, attempt, close, exercise, given

EX_WEIGHT = torch.tensor([[0.9, -0.1, 0.4, -0.05], [0.2, -0.7, 0.03, 0.6]])


def _remaining() -> int:
    return 1536 * 384 - round(0.7 * 1536 * 384)


@exercise("03.remaining_weights",
          "A 1536x384 FFN weight is magnitude-pruned to 70% sparsity. How many weights are left non-zero?",
          _remaining,
          {"removed": "that is how many were removed; the question asks how many are left.",
           "wrong": "count the weights, then remove round(0.7 * count) of them."})
def _check_remaining(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, round(0.7 * 1536 * 384)):
        return "removed"
    return None if close(answer, _remaining()) else "wrong"


def _head_params() -> int:
    # 4 heads of size 32: rows of query/key/value (weights + biases) and columns of the output projection.
    return 4 * 32 * (3 * 384 + 3) + 4 * 32 * 384


@exercise("03.head_params",
          "How many parameters disappear when 4 of the 12 heads (head size 32, hidden 384) are removed from "
          "one layer's attention?",
          _head_params,
          {"no_output": "a head also owns 32 input columns of the output projection: they go too.",
           "wrong": "each head owns 32 rows (and 32 biases) in query, key and value, and 32 input columns of the "
                    "output projection (its bias stays)."})
def _check_head_params(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 4 * 32 * (3 * 384 + 3)):
        return "no_output"
    return None if close(answer, _head_params()) else "wrong"


def _magnitude_mask() -> torch.Tensor:
    return EX_WEIGHT.abs() >= EX_WEIGHT.abs().flatten().sort(descending=True).values[3]


@exercise("03.magnitude_mask",
          "By hand: the keep-mask (True = keep) of a 50% magnitude pruning of [[0.9, -0.1, 0.4, -0.05], "
          "[0.2, -0.7, 0.03, 0.6]], as a 2x4 tensor.",
          _magnitude_mask,
          {"signed": "rank by magnitude, |w|: -0.7 is a large weight, not a small one.",
           "shape": "the mask must have the weight's shape (2x4), so it can multiply it.",
           "wrong": "keep the 4 largest |w| of the 8 weights: compare weight.abs() with the 4th largest."})
def _check_magnitude_mask(answer: Any) -> str | None:
    mask = torch.as_tensor(given(answer)).bool()
    if mask.shape != EX_WEIGHT.shape:
        return "shape"
    if torch.equal(mask, EX_WEIGHT >= EX_WEIGHT.flatten().sort(descending=True).values[3]):
        return "signed"
    return None if torch.equal(mask, _magnitude_mask()) else "wrong"


# --- 03.fine_grained_prune ---------------------------------------------------------------------------

# Golden tensor and mask from MIT 6.5940 (EfficientML.ai) Lab 1, `test_fine_grained_prune`
# (https://hanlab.mit.edu/courses/2023-fall-65940, lab1.ipynb): at sparsity 0.75, round(18.75) = 19 of the
# 25 weights go and the 6 largest |w| stay. Its TODO 2 asks for 10 non-zeros: sparsity 0.6.
MIT_TENSOR = torch.tensor([[-0.46, -0.40, 0.39, 0.19, 0.37],
                           [0.00, 0.40, 0.17, -0.15, 0.16],
                           [-0.20, -0.23, 0.36, 0.25, 0.03],
                           [0.24, 0.41, 0.07, 0.13, -0.15],
                           [0.48, -0.09, -0.36, 0.12, 0.45]])
MIT_MASK = torch.tensor([[True, True, False, False, False],
                         [False, True, False, False, False],
                         [False, False, False, False, False],
                         [False, True, False, False, False],
                         [True, False, False, False, True]])


def _fine_grained_prune():
    def fine_grained_prune(w: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Keep-mask (True = keep) zeroing the round(sparsity * w.numel()) smallest |w|; w is left unchanged."""
        importance = w.abs()
        num_zeros = round(sparsity * w.numel())
        threshold = torch.kthvalue(importance.flatten(), num_zeros).values
        return importance > threshold
    return fine_grained_prune


def _golden_cases() -> list[tuple[torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(3)
    tie_free = torch.randn(16, 24, generator=gen)  # no ties: off-by-one counts show as exactly one weight
    return [(MIT_TENSOR, 0.75), (MIT_TENSOR, 0.6), (tie_free, 0.3), (tie_free, 0.5)]


def _fine_grained_mistake(got: Any, w: torch.Tensor, s: float) -> str | None:
    """The name of what is wrong with one mask, or None when it is the reference's."""
    if isinstance(got, (tuple, list)):
        return "not_mask"
    got = torch.as_tensor(got)
    if got.shape != w.shape:
        return "shape"
    if not ((got == 0) | (got == 1)).all():
        return "not_mask"
    got = got.bool()
    want = _fine_grained_prune()(w, s)
    if torch.equal(got, want):
        return None
    n, zeros = w.numel(), round(s * w.numel())
    if torch.equal(got, w > torch.kthvalue(w.flatten(), zeros).values):
        return "signed"
    kept = int(got.sum())
    if kept != n - zeros and abs(kept - zeros) <= 1:
        return "swapped"
    if abs(kept - (n - zeros)) == 1:
        return "count_off"
    return "wrong"


@exercise("03.fine_grained_prune",
          "Write fine_grained_prune(w, sparsity) -> keep-mask (True = keep): zero the round(sparsity * w.numel()) "
          "smallest |w|, using torch.kthvalue for the threshold, without changing w.",
          _fine_grained_prune,
          {"signed": "rank by importance = |w|: -0.46 is a large weight to keep, not a small one. Take w.abs() "
                     "before looking for the threshold.",
           "swapped": "you kept the `sparsity` fraction instead of removing it: sparsity = zeros / weights, so "
                      "num_zeros = round(sparsity * w.numel()) and the rest, the largest |w|, stay.",
           "count_off": "one weight too many or too few: num_zeros = round(sparsity * w.numel()) (round, not "
                        "int), threshold = the num_zeros-th smallest |w| (torch.kthvalue(..., k=num_zeros)), "
                        "keep |w| strictly greater than it.",
           "mutated": "your function changed the weight it was given (MIT's lab version ends with "
                      "tensor.mul_(mask)). Here only return the mask: the notebook applies it to a copy of the model.",
           "shape": "the mask must have the weight's shape, so it can multiply it: compare w.abs() (same shape "
                    "as w) with the threshold; flatten only inside torch.kthvalue.",
           "not_mask": "return the keep-mask alone (True or 1 = keep, False or 0 = prune), not the pruned "
                       "weights, and not a tuple.",
           "wrong": "importance = w.abs(); num_zeros = round(sparsity * w.numel()); the threshold is the "
                    "num_zeros-th smallest importance (torch.kthvalue); keep importance > threshold."},
          kind="code",
          uses="section 1 prunes every block layer of a copy of the baseline with it; section 5 prunes the plan "
               "and the uniform model with it for the one comparison on the test split.")
def _check_fine_grained_prune(answer: Any) -> str | None:
    found = []
    for w, s in _golden_cases():
        found.append(_fine_grained_mistake(attempt(answer, w.clone(), s), w, s))
    wrong = [m for m in found if m is not None]
    # The most specific diagnosis over all cases: ties in the MIT tensor can blur one case's count.
    order = ("shape", "not_mask", "signed", "swapped", "count_off", "wrong")
    return min(wrong, key=order.index) if wrong else None


# --- 03.remove_head --------------------------------------------------------------------------------

HIDDEN, HEADS, HEAD_SIZE = 8, 4, 2  # the golden tiny attention block: 4 heads of 2


def _tiny_attention() -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """Fresh query, key, value and output projections of the golden block (fixed seed)."""
    layers = tuple(nn.Linear(HIDDEN, HIDDEN) for _ in range(4))  # their random init is overwritten below
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(HIDDEN, HIDDEN, generator=gen) / math.sqrt(HIDDEN))
            layer.bias.copy_(torch.randn(HIDDEN, generator=gen) / 4)
    return layers


def attend(query: nn.Linear, key: nn.Linear, value: nn.Linear, output: nn.Linear, x: torch.Tensor,
           head_size: int, zero_head: int | None = None) -> torch.Tensor:
    """Multi-head self-attention as BERT computes it; `zero_head` drops one head's context before the output."""
    b, t, _ = x.shape
    heads = query.out_features // head_size

    def split(layer):
        return layer(x).view(b, t, heads, head_size).transpose(1, 2)
    q, k, v = split(query), split(key), split(value)
    ctx = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_size), -1) @ v
    if zero_head is not None:
        ctx[:, zero_head] = 0
    return output(ctx.transpose(1, 2).reshape(b, t, heads * head_size))


def _remove_head():
    def remove_head(query, key, value, output, head, head_size):
        """New query/key/value/output Linear layers without head `head`; the given layers stay unchanged."""
        keep = torch.tensor([i for i in range(query.out_features) if i // head_size != head])

        def rows(layer):  # query, key, value: a head owns head_size of their outputs (rows) and biases
            new = nn.Linear(layer.in_features, len(keep))
            with torch.no_grad():
                new.weight.copy_(layer.weight[keep])
                new.bias.copy_(layer.bias[keep])
            return new
        out = nn.Linear(len(keep), output.out_features)  # the output projection reads the heads: columns
        with torch.no_grad():
            out.weight.copy_(output.weight[:, keep])
            out.bias.copy_(output.bias)
        return rows(query), rows(key), rows(value), out
    return remove_head


def _state(layers) -> list[dict]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]


def _remove_head_mistake(answer: Any, head: int) -> str | None:
    layers = _tiny_attention()
    before = _state(layers)
    got = attempt(answer, *layers, head, HEAD_SIZE)
    if any(a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)
           for a, b in zip(before, _state(layers))):
        raise Mistake("mutated")
    if not isinstance(got, (tuple, list)) or len(got) != 4 or not all(isinstance(m, nn.Linear) for m in got):
        return "not_layers"
    if any(m is old for m in got for old in layers):
        raise Mistake("mutated")
    q, k, v, o = got
    small = HIDDEN - HEAD_SIZE
    if o.weight.shape == (small, HIDDEN):
        return "output_rows"
    if any(m.weight.shape != (small, HIDDEN) for m in (q, k, v)) or o.weight.shape != (HIDDEN, small):
        return "wrong"
    want = _remove_head()(*_tiny_attention(), head, HEAD_SIZE)
    for new, ref, orig in zip((q, k, v), want[:3], layers[:3]):
        if not torch.equal(new.weight, ref.weight):
            others = [torch.cat([orig.weight[:at], orig.weight[at + HEAD_SIZE:]])
                      for at in range(HIDDEN - HEAD_SIZE + 1)]
            return "wrong_head" if any(torch.equal(new.weight, w) for w in others) else "wrong"
    if any(m.bias is None or m.bias.shape != r.bias.shape or not torch.equal(m.bias, r.bias)
           for m, r in zip(got, want)):
        return "biases"
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = attend(q, k, v, o, x, HEAD_SIZE)
        masked = attend(*layers, x, HEAD_SIZE, zero_head=head)
    return None if torch.allclose(ours, masked, atol=1e-5) else "wrong"


@exercise("03.remove_head",
          "Write remove_head(query, key, value, output, head, head_size) -> four new, smaller nn.Linear layers "
          "without head `head` (its rows and biases in query/key/value, its input columns in output).",
          _remove_head,
          {"output_rows": "the output projection *reads* the heads: head h owns its input columns "
                          "(weight[:, keep]), not its rows; its output size stays the hidden size.",
           "biases": "query, key and value lose the head's biases too (bias[keep]); the output projection "
                     "keeps all its outputs, so its bias is copied whole.",
           "wrong_head": "you removed a head_size-wide slice, but not head `head`'s: head h owns rows "
                         "h * head_size up to (h + 1) * head_size - 1.",
           "mutated": "your function changed the layers it was given: build new nn.Linear layers, copy the kept "
                      "rows/columns into them, and leave the originals as they were.",
           "not_layers": "return four nn.Linear layers, in the order (query, key, value, output).",
           "wrong": "keep = every index whose i // head_size is not head; query/key/value: new Linear with "
                    "weight[keep] and bias[keep]; output: new Linear with weight[:, keep] and the whole bias."},
          kind="code",
          uses="section 6 cuts a head out of a real MiniLM layer with it; the logits equal those of the model with "
               "that head's output zeroed, the weights those transformers' prune_linear_layer cuts.")
def _check_remove_head(answer: Any) -> str | None:
    for head in (2, 0, 3):  # a middle head first: offset mistakes show there
        mistake = _remove_head_mistake(answer, head)
        if mistake is not None:
            return mistake
    return None


# --- value exercises ---------------------------------------------------------------------------------

def _zeros_speedup() -> float:
    return 1.0


@exercise("03.zeros_speedup",
          "Roughly what b32 speedup does 50% unstructured sparsity give on a CPU, with weights stored dense?",
          _zeros_speedup,
          {"halved": "2x would need the multiply to skip zeros; a dense matmul reads and multiplies every stored number.",
           "wrong": "the matrix multiply still reads and multiplies every stored number, zero or not."})
def _check_zeros_speedup(answer: Any) -> str | None:
    answer = float(given(answer))
    if answer >= 1.7:
        return "halved"
    return None if 0.7 <= answer <= 1.3 else "wrong"  # "about 1x": timing noise, not a speedup
