"""Notebook 03 (pruning): a magnitude mask by hand and in code, removing an attention head, what a head owns,
a structured importance score the learner designs; predictions of speed and accuracy; two written questions."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from labkit.course.exercises import Mistake, attempt, exercise, given, prediction, written

EX_WEIGHT = torch.tensor([[0.9, -0.1, 0.4, -0.05], [0.2, -0.7, 0.03, 0.6]])


# --- 03.head_shapes: what a head owns, read as shapes --------------------------------------------------

def _head_shapes() -> tuple:
    return ((256, 384), (256,), (384, 256), (384,))


@exercise("03.head_shapes",
          "Four of the 12 heads (head size 32, hidden 384) are removed from one MiniLM layer. Give the shapes of the "
          "new query weight, query bias, output-projection weight and output-projection bias, as a tuple of four "
          "shapes in that order (nn.Linear stores its weight as (out_features, in_features)).",
          _head_shapes,
          {"output_rows": "the output projection *reads* the heads: what a head owns there is input columns, so its "
                          "out_features, the hidden size the next layer expects, cannot change.",
           "output_bias": "a bias has one entry per output. The output projection's outputs are the hidden size, "
                          "shared by every head: none of them leaves with a head.",
           "transposed": "nn.Linear keeps its weight as (out_features, in_features): a head is part of the query's "
                         "outputs, so it is the first number of its shape that shrinks.",
           "wrong": "a head is a slice of the query's outputs and of the output projection's inputs. Count what 4 "
                    "heads of 32 take from 384, then ask for each tensor which of its dimensions those are."},
          ladder=("A head is a slice of 32 of the 384 outputs of query, key and value (and of their biases), and "
                  "the same 32 of the output projection's inputs. A slice of inputs is columns; of outputs, rows.",
                  "The output projection is where it usually goes wrong: its outputs are the hidden state every "
                  "later layer reads, so they must stay 384 whatever happens to the heads.",
                  "A smaller case: hidden 8, 4 heads of 2, remove 1. Query weight (8, 8) becomes (6, 8), its bias "
                  "(6,); the output weight (8, 8) becomes (8, 6) and its bias stays (8,)."))
def _check_head_shapes(answer: Any) -> str | None:
    try:
        got = tuple(tuple(int(n) for n in shape) for shape in given(answer))
    except TypeError as err:
        raise Mistake("wrong_type", "a tuple of four shapes, e.g. ((6, 8), (6,), (8, 6), (8,))") from err
    if len(got) != 4:
        return "wrong"
    if got == _head_shapes():
        return None
    if got[2] == (256, 384):
        return "output_rows"
    if got[3] == (256,):
        return "output_bias"
    if got[0] == (384, 256):
        return "transposed"
    return "wrong"


def _magnitude_mask() -> torch.Tensor:
    return EX_WEIGHT.abs() >= EX_WEIGHT.abs().flatten().sort(descending=True).values[3]


@exercise("03.magnitude_mask",
          "By hand: the keep-mask (True = keep) of a 50% magnitude pruning of [[0.9, -0.1, 0.4, -0.05], "
          "[0.2, -0.7, 0.03, 0.6]], as a 2x4 boolean tensor. Checked against the mask of the ranking above.",
          _magnitude_mask,
          {"signed": "you ranked by the signed value, so -0.7 looked small. Magnitude pruning asks how much a "
                     "weight can move an output, and that is its size whatever its sign.",
           "shape": "the mask multiplies the weight entry by entry, so it needs the weight's own 2x4 shape.",
           "wrong": "half of 8 weights go. Order the 8 sizes, find where the lower half ends, and mark the "
                    "weights above that line True."},
          ladder=("Pruning by magnitude drops the weights that change the outputs least: the smallest in size, "
                  "whatever their sign. At 50%, half of them go.",
                  "The step that goes wrong is the sign: a large negative weight moves the output as much as a "
                  "large positive one, so it stays.",
                  "A smaller case: [[0.3, -0.9], [0.1, 0.5]] at 50%: the sizes 0.1 and 0.3 go, so the mask is "
                  "[[False, True], [False, True]]."))
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
          "Write fine_grained_prune(w, sparsity) -> a keep-mask (bool or 0/1, True = keep) with w's shape that "
          "drops round(sparsity * w.numel()) weights of w by magnitude and leaves w unchanged. Checked on MIT "
          "6.5940 Lab 1's golden 5x5 tensor (sparsity 0.75 and 0.6) and on a tie-free 16x24 tensor.",
          _fine_grained_prune,
          {"signed": "your mask ranks by the signed value: -0.46 came out as a small weight. The ranking is by "
                     "size; the sign says which way a weight pushes, not how far.",
           "swapped": "your mask keeps about the `sparsity` fraction instead of removing it. Sparsity counts the "
                      "zeros, so at 0.75 only a quarter of the weights stay.",
           "count_off": "one weight too many or too few stays. Check how the number to drop is made whole (round "
                        "and int differ at .5 and above), and whether a k-th smallest value counts from 1, and "
                        "whether the weight exactly at the threshold goes or stays.",
           "mutated": "your function changed the weight it was given (MIT's lab version multiplies it in place). "
                      "Here it only returns the mask: the notebook applies it to a copy of the model.",
           "shape": "the mask must have the weight's shape, so it can multiply it. Flatten only where a 1-D "
                    "tensor is needed to find the threshold, and compare the unflattened sizes with it.",
           "not_mask": "return the keep-mask alone (True or 1 = keep, False or 0 = prune), not the pruned "
                       "weights, and not a tuple.",
           "wrong": "the three steps of the worked example, for any shape: how many go, the size at which the "
                    "dropped ones end, and which weights lie above it."},
          kind="code",
          uses="section 1 prunes every block layer of a copy of the baseline with it; section 5 prunes the plan "
               "and the uniform model with it for the one comparison on the test split.",
          ladder=("Magnitude pruning sorts the weights by size and drops the smallest; the mask marks the rest. "
                  "Nothing but the count and one threshold is needed.",
                  "The step that usually goes wrong is the threshold: torch.kthvalue counts k from 1 and wants a "
                  "1-D tensor, and a weight equal to the threshold is one of the dropped ones.",
                  "A smaller case: sizes [0.4, 0.1, 0.3, 0.2] at sparsity 0.5: 2 go; the 2nd smallest size is "
                  "0.2; the mask is size > 0.2, i.e. [True, False, True, False]."))
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
          "(query, key, value, output) that compute what the block computed with head `head`'s result set to "
          "zero; the four given layers stay unchanged. Checked on a tiny golden block (hidden 8, 4 heads of 2) "
          "for heads 2, 0 and 3: shapes, weights, biases and the block's output.",
          _remove_head,
          {"output_rows": "the output projection *reads* the heads: a head is some of its inputs, so its columns "
                          "go, and its number of outputs, the hidden size, stays.",
           "biases": "query, key and value make the head's outputs, bias included, so the head's share of each "
                     "bias goes with it. The output projection's bias belongs to its outputs, which all stay.",
           "wrong_head": "you removed a slice of head_size, but not head `head`'s. Head h starts where the h "
                         "heads before it end.",
           "mutated": "your function changed the layers it was given. Build new layers, copy what stays into "
                      "them, and leave the originals as they were.",
           "not_layers": "return four nn.Linear layers, in the order (query, key, value, output).",
           "wrong": "a head is a contiguous slice of query/key/value outputs and the same slice of the output "
                    "projection's inputs. Make the list of indices that stay, then four new layers of the smaller "
                    "sizes holding only those rows or columns."},
          kind="code",
          uses="section 6 cuts a head out of a real MiniLM layer with it; the logits equal those of the model with "
               "that head's output zeroed, the weights those transformers' prune_linear_layer cuts.",
          ladder=("A head is a slice of head_size of the outputs of query, key and value, and the same slice of "
                  "the output projection's inputs. Removing it means new layers without that slice.",
                  "The step that usually goes wrong is the output projection: its weight is (out, in), and the "
                  "head is among its inputs, so the slice is taken along the second dimension; its bias stays.",
                  "A smaller case: hidden 4, 2 heads of 2, remove head 1: the indices that stay are [0, 1]; a "
                  "query weight of shape (4, 4) keeps rows 0 and 1 -> (2, 4), the output weight keeps columns 0 "
                  "and 1 -> (4, 2), the output bias keeps all 4 entries."))
def _check_remove_head(answer: Any) -> str | None:
    for head in (2, 0, 3):  # a middle head first: offset mistakes show there
        mistake = _remove_head_mistake(answer, head)
        if mistake is not None:
            return mistake
    return None


# --- 03.neuron_importance: a structured score the learner designs ---------------------------------------

FFN_HIDDEN, FFN_SIZE = 8, 6  # the golden tiny feed-forward: 8 -> 6 neurons -> 8
DEAD, MUTE = 1, 4  # neuron 1 has no weights at all; neuron 4's output column is zero, so it never reaches the output


def _tiny_ffn() -> tuple[nn.Linear, nn.Linear]:
    """The golden up- and down-projections (fixed seed), with neuron DEAD empty and neuron MUTE's output cut."""
    up, down = nn.Linear(FFN_HIDDEN, FFN_SIZE), nn.Linear(FFN_SIZE, FFN_HIDDEN)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        up.weight.copy_(torch.randn(FFN_SIZE, FFN_HIDDEN, generator=gen) / math.sqrt(FFN_HIDDEN))
        up.bias.copy_(torch.randn(FFN_SIZE, generator=gen) / 4)
        down.weight.copy_(torch.randn(FFN_HIDDEN, FFN_SIZE, generator=gen) / math.sqrt(FFN_SIZE))
        down.bias.copy_(torch.randn(FFN_HIDDEN, generator=gen) / 4)
        up.weight[DEAD], up.bias[DEAD], down.weight[:, DEAD] = 0, 0, 0
        up.bias[MUTE] = 2.0  # it fires on every token: only its output column tells that it does nothing
        down.weight[:, MUTE] = 0
    return up, down


def _calibration(padding: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two golden calibration batches (hidden states, attention mask); padded positions hold `padding`."""
    gen = torch.Generator().manual_seed(13)
    out = []
    for lengths in ((5, 3), (4, 2, 5)):
        mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
        hidden = torch.randn(len(lengths), 5, FFN_HIDDEN, generator=gen)
        out.append((hidden.masked_fill(~mask[..., None], padding), mask))
    return out


def _neuron_importance():
    def neuron_importance(up: nn.Linear, down: nn.Linear, batches) -> torch.Tensor:
        """One score per FFN neuron (higher = more important): the root mean square, over the real tokens of the
        calibration batches, of what the neuron adds to the block's output."""
        reach = torch.linalg.vector_norm(down.weight.detach().float(), dim=0)  # how far one unit of output moves
        total = torch.zeros(up.out_features, device=up.weight.device)
        count = 0
        with torch.no_grad():
            for hidden, mask in batches:
                tokens = hidden[mask.bool()].to(up.weight.dtype)  # padding is not text: it says nothing
                act = torch.nn.functional.gelu(up(tokens)).float()  # (tokens, neurons)
                total += ((act * reach) ** 2).sum(dim=0)
                count += tokens.shape[0]
        return (total / max(count, 1)).sqrt().cpu()
    return neuron_importance


def _layers_changed(before: list[dict], layers) -> bool:
    return any(a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)
               for a, b in zip(before, _state(layers)))


def _scores_of(answer: Any, padding: float) -> torch.Tensor:
    layers = _tiny_ffn()
    before, batches = _state(layers), _calibration(padding)
    kept = [(h.clone(), m.clone()) for h, m in batches]
    got = attempt(answer, *layers, batches)
    if _layers_changed(before, layers) or any(not torch.equal(h, h0) or not torch.equal(m, m0)
                                              for (h, m), (h0, m0) in zip(batches, kept)):
        raise Mistake("mutated")
    if not isinstance(got, torch.Tensor):
        raise Mistake("not_scores", "got {type}", type=type(got).__name__)
    return got


@exercise("03.neuron_importance",
          "Design and write neuron_importance(up, down, batches) -> a 1-D float tensor of up.out_features scores, "
          "one per FFN neuron, higher = more important to keep. `up` and `down` are the block's FFN Linear layers "
          "(the FFN computes down(gelu(up(x)))); `batches` is a list of (hidden, mask) calibration pairs: hidden "
          "(batch, tokens, hidden size) entering the FFN, mask (batch, tokens) True at real tokens. The inputs "
          "stay unchanged. There is no one right score: the check runs it on a golden 8 -> 6 -> 8 FFN and asks "
          "for the contract (shape, finite), that padding does not change the scores, and that a neuron without "
          "weights and a neuron whose output column is zero both rank below every other neuron.",
          _neuron_importance,
          {"shape": "one score per neuron: a 1-D tensor as long as up.out_features. Reduce over the tokens and the "
                    "weights of a neuron, never over the neurons.",
           "not_scores": "return the scores as one torch tensor (not a list, a number or a mask).",
           "not_finite": "some scores are NaN or infinite: an average over zero tokens, or a division by a norm "
                         "that is zero for the empty neuron, does that.",
           "padding": "your scores change when only the padded positions change. Padding is not text: count "
                      "only the tokens the mask marks True, in the sum and in the number you divide by.",
           "dead_not_last": "a neuron whose weights are all zero adds nothing to any output, yet your score "
                            "puts it above another neuron. An importance should be zero, or the lowest, for it.",
           "ignored_output": "a neuron whose column of the down-projection is zero never reaches the block's "
                             "output, however strongly it fires. Your score looks at the up-projection (or the "
                             "activation) alone: let it see what the neuron can do to the output too.",
           "wrong": "score each neuron by how much it can change what the FFN returns: on the real tokens of the "
                    "calibration batches, or from the weights on both sides of it."},
          kind="code",
          uses="section 6 scores every block's FFN neurons of the real model with it on calibration batches from "
               "the train split, cuts the same share by your score and by weight magnitude, and compares the two "
               "on the validation split with a paired test.",
          ladder=("A neuron matters as much as it changes the block's output. That needs both sides of it: how "
                  "strongly it fires on real inputs (the activation after the up-projection) and how far one unit "
                  "of its activation moves the output (its column of the down-projection).",
                  "The step that usually goes wrong is the reduction: the activations are (tokens, neurons); "
                  "padded tokens must be left out, and the average must run over the tokens, leaving one number "
                  "per neuron.",
                  "A smaller case: 2 neurons, 3 real tokens, activations [[1, 0], [3, 0], [0, 2]], output-column "
                  "norms [0.5, 2]. What each adds to the output: [[0.5, 0], [1.5, 0], [0, 4]]; root mean square "
                  "over the tokens: about [0.91, 2.31], so neuron 1 ranks first although it fired on one token only."))
def _check_neuron_importance(answer: Any) -> str | None:
    scores = _scores_of(answer, padding=0.0)
    if scores.dim() != 1 or scores.numel() != FFN_SIZE or not scores.is_floating_point():
        return "shape"
    scores = scores.detach().float().cpu()
    if not torch.isfinite(scores).all():
        return "not_finite"
    shifted = _scores_of(answer, padding=40.0).detach().float().cpu()
    if shifted.shape != scores.shape or not torch.allclose(scores, shifted, rtol=1e-4, atol=1e-6):
        return "padding"
    live = [i for i in range(FFN_SIZE) if i not in (DEAD, MUTE)]
    if not (scores[DEAD] < scores[live]).all():
        return "dead_not_last"
    if not (scores[MUTE] < scores[live]).all():
        return "ignored_output"
    return None


# --- predictions and written questions -----------------------------------------------------------------

prediction("03.zeros_speedup_b32", "the batch-32 speedup over the dense model of 50% unstructured zeros, the "
           "weights still stored dense", unit="x")
prediction("03.drop_at_90", "the accuracy drop, in points on the quick validation subset, of layer-scope "
           "magnitude pruning at 90% sparsity (no recovery)", unit=" points")
prediction("03.structured_speedup_b32", "the batch-32 speedup over dense of the last row of the structured table "
           "(heads and FFN neurons removed, then recovered)", unit="x")
written("03.speed_vs_bytes", "The structured table's last row: why do its size ratio and its speedup differ, "
        "and which of the two does the model's layout let grow further?", points=2)
written("03.score_verdict", "Your neuron score against magnitude on the validation split: which would you keep, "
        "and what do the interval and the paired test allow you to claim?", points=2)
