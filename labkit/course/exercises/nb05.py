"""Notebook 05 (dynamic pruning): tokens kept at run time, the cubic sparsity schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given, prediction, written


def _batch_width() -> int:
    return math.ceil(0.3 * 26)  # the row that keeps most sets the width; the 9-token row keeps 3 and pads the rest


@exercise("05.batch_width",
          "Two snippets go through token pruning together, one of 26 real tokens and one of 9 ([CLS] and [SEP] "
          "included), keep_ratio=0.3 from layer 2. How many token slots wide are the hidden states that block 3 "
          "receives? Answer with an integer.",
          _batch_width,
          {"shortest_row": "that is what the shorter snippet keeps, but both rows travel in one tensor: can it be "
                           "narrower than what the other row keeps?",
           "sum": "the rows are not laid end to end: each row of the batch is its own sequence.",
           "round_down": "a row keeps its count rounded UP (a short snippet must never lose every token).",
           "full": "from layer 2 on the batch really is shorter: that is where the time is saved.",
           "wrong": "work out what each row keeps, then ask how wide one tensor holding both rows must be."},
          ladder=("Each row keeps its own count of tokens, but a batch is one rectangular tensor.",
                  "The count is rounded up, and the width is set by the row that keeps the most; the other row's "
                  "leftover slots are masked out.",
                  "Rows of 10 and 4 real tokens at keep_ratio 0.5 keep 5 and 2: the batch is 5 slots wide, and "
                  "3 slots of the second row are masked."))
def _check_batch_width(answer: Any) -> str | None:
    answer = float(given(answer))
    if answer == _batch_width():
        return None
    return {3: "shortest_row", 11: "sum", 7: "round_down", 26: "full"}.get(int(answer) if answer.is_integer() else -1,
                                                                          "wrong")


def _half_way_step() -> int:
    return 21  # 1 - (1 - t/100)^3 first reaches 1/2 at t = 100 * (1 - 0.5 ** (1 / 3)) = 20.6


@exercise("05.half_way_step",
          "A cubic schedule ramps from 0 to 80% sparsity over 100 steps. At which step does the target sparsity "
          "first reach 40%, half of the final one? Answer with the step number.",
          _half_way_step,
          {"linear": "half the final sparsity at half the steps is a straight line; the cubic schedule is not.",
           "just_before": "at that step the target is still a little under 40%: which is the first step at or "
                          "above it?",
           "wrong": "set the schedule's fraction of the final sparsity to one half and solve for the step; then "
                    "take the first whole step at or past it."},
          ladder=("The cubic schedule prunes fast early, while there are many weights to spare: most of the "
                  "pruning is done well before half time.",
                  "Set the fraction of the final sparsity to 1/2 and solve for (1 - t/T): it is a cube root, not "
                  "a half.",
                  "Over T = 10 steps, the fraction 1 - (1 - t/10)^3 reaches 7/8 at t = 5 (1 - 1/8); it reaches "
                  "1/2 where (1 - t/10)^3 = 1/2, t = 2.06, so step 3."))
def _check_half_way_step(answer: Any) -> str | None:
    answer = float(given(answer))
    if 20.6 <= answer <= 21:
        return None
    if close(answer, 50):
        return "linear"
    return "just_before" if close(answer, 20) else "wrong"


# --- 05.keep_top_tokens: which tokens the later layers see ----------------------------------------------------

def _keep_top_tokens():
    def keep_top_tokens(hidden, scores, mask, keep):
        ranked = scores.masked_fill(mask == 0, float("-inf"))  # padding ranks last (a new tensor: no mutation)
        ranked[:, 0] = float("inf")  # [CLS] feeds the classifier: always kept
        idx = ranked.topk(keep, dim=1).indices.sort(dim=1).values  # the top `keep`, back in sentence order
        kept = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return kept, idx
    return keep_top_tokens


def _tokens_golden():
    """Row 0: [CLS] scores lowest and the padding scores highest; row 1 has exactly `keep` real tokens."""
    hidden = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4) / 10
    scores = torch.tensor([[0.01, 0.30, 0.10, 0.50, 0.20, 0.90],
                           [0.05, 0.20, 0.60, 0.80, 0.70, 0.30]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    gen = torch.Generator().manual_seed(5)
    big = torch.randn(3, 10, 8, generator=gen)
    big_scores = torch.rand(3, 10, generator=gen)
    big_mask = (torch.arange(10)[None, :] < torch.tensor([[10], [7], [9]])).long()
    return [(hidden, scores, mask, 3, [[0, 1, 3], [0, 1, 2]]),
            (big, big_scores, big_mask, 5, None), (big, big_scores, big_mask, 1, [[0], [0], [0]])]


def _want_indices(scores: torch.Tensor, mask: torch.Tensor, keep: int) -> list[list[int]]:
    rows = []
    for s, m in zip(scores.tolist(), mask.tolist()):
        real = [i for i in range(1, len(s)) if m[i]]
        rows.append(sorted([0] + sorted(real, key=lambda i: -s[i])[: keep - 1]))
    return rows


@exercise("05.keep_top_tokens",
          "Write keep_top_tokens(hidden, scores, mask, keep): hidden (batch, seq, dim), scores (batch, seq), mask "
          "(batch, seq) of 1 for real tokens and 0 for padding. In every row keep `keep` tokens: [CLS] (position "
          "0) always, padding only last, otherwise the highest scores. Return (kept hidden states (batch, keep, "
          "dim), kept indices (batch, keep)), both in the tokens' original order.",
          _keep_top_tokens,
          {"cls_dropped": "[CLS] (position 0) was dropped in a row where its score is low: the classifier reads "
                          "[CLS], so it must win the ranking whatever its score.",
           "padding_kept": "a padding position was kept while a real token was dropped: padding must lose the "
                           "ranking to every real token, whatever score it carries.",
           "order": "the right tokens, in the wrong order: a top-k comes back best first. Give the kept positions "
                    "back their sentence order, so [CLS] stays first.",
           "gather": "the positions are right but the hidden states are not hidden[b, idx[b, j], :]: pick whole "
                     "vectors along the sequence dimension (dim 1), with an index as wide as the features.",
           "shape": "return kept hidden states of shape (batch, keep, dim) and positions of shape (batch, keep): "
                    "`keep` tokens in every row.",
           "wrong": "per row: padding ranked below every real token, [CLS] above all; the best `keep` positions, "
                    "in sentence order; then those vectors of hidden."},
          ladder=("Ranking is a top-k on a copy of the scores that you have rigged: the tokens that must stay win, "
                  "the ones that must go lose, whatever their scores.",
                  "Rig a NEW tensor (the caller's scores must not change), and sort the chosen positions back into "
                  "order before picking the vectors: picking is along dim 1, with the index repeated over dim.",
                  "Scores [0.1, 0.7, 0.4, 0.9], mask [1, 1, 1, 0], keep 2: position 3 is padding (out), position 0 "
                  "is [CLS] (in), the best other is 1 (0.7): positions [0, 1], vectors hidden[:, [0, 1], :]."),
          kind="code", uses="notebook 05's pruned_tokens hook calls it in block start_layer of every forward pass: "
                            "the tokens every later block sees")
def _check_keep_top_tokens(answer: Any) -> str | None:
    for hidden, scores, mask, keep, want in _tokens_golden():
        want = want or _want_indices(scores, mask, keep)
        out = attempt(answer, hidden, scores, mask, keep)
        if not isinstance(out, tuple) or len(out) != 2:
            raise Mistake("wrong_type", "return two tensors: (kept hidden states, kept indices)")
        kept, idx = out
        if not isinstance(idx, torch.Tensor) or not isinstance(kept, torch.Tensor):
            raise Mistake("wrong_type", "return two tensors: (kept hidden states, kept indices)")
        b, _, d = hidden.shape
        if tuple(idx.shape) != (b, keep):
            return "shape"
        got = idx.long().tolist()
        for row, (g, w) in enumerate(zip(got, want)):
            if 0 not in g:
                return "cls_dropped"
            if any(mask[row, i] == 0 for i in g) and sum(int(v) for v in mask[row]) >= keep:
                return "padding_kept"
            if sorted(g) != w:
                return "wrong"
            if g != w:
                return "order"
        ref = hidden.gather(1, torch.tensor(want)[..., None].expand(b, keep, d))
        if tuple(kept.shape) != (b, keep, d) or not torch.equal(kept, ref):
            return "gather"
    return None


# --- 05.cubic_schedule: how fast sparsity rises while fine-tuning ---------------------------------------------

def _cubic_schedule():
    def cubic_schedule(step, total, final):
        t = min(step, total) / total  # past the end of the ramp the sparsity stays at `final`
        return final * (1 - (1 - t) ** 3)
    return cubic_schedule


@exercise("05.cubic_schedule",
          "Write cubic_schedule(step, total, final): the cubic schedule's target sparsity (a float) at `step` of a "
          "ramp of `total` steps to `final`: 0 at step 0, `final` at step `total` and for every step after it. "
          "Checked at several steps of three ramps, and past their end.",
          _cubic_schedule,
          {"not_final": "at step 0 the target must be 0 and at step = total exactly `final`: yours is not; is the "
                        "curve inside out (the remaining fraction instead of the done one)?",
           "linear": "that is a straight line. The cubic schedule prunes FAST early, while the network has many "
                     "weights to spare, and slowly at the end.",
           "square": "the curve bends, but too little: the exponent of the remaining fraction is 3.",
           "past_total": "past step = total the value must stay at `final`: the remaining fraction turns negative "
                         "there and, cubed, overshoots. Keep the step from passing the end of the ramp.",
           "wrong": "the fraction of the ramp still to go, cubed, is the fraction of `final` not yet pruned."},
          ladder=("Sparsity rises fast at first and flattens at the end: what is left to prune shrinks like the "
                  "cube of the time left.",
                  "Work with the fraction of the ramp done, t/T, and never let it pass 1 (steps after the ramp).",
                  "final = 0.6, total = 4, step 1: a quarter done, three quarters to go, (3/4)^3 = 27/64 not yet "
                  "pruned, so 0.6 * 37/64 = 0.347; at step 6 it is 0.6."),
          kind="code", uses="prune_while_training(model, tok, 0.7, steps, fn): the target sparsity of every "
                            "fine-tuning step")
def _check_cubic_schedule(answer: Any) -> str | None:
    def s(step: int, total: int, final: float) -> float:
        value = attempt(answer, step, total, final)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise Mistake("wrong_type", "return a number, got {type}", type=type(value).__name__) from None

    for total, final in ((100, 0.8), (10, 0.5), (7, 0.9)):
        if not close(s(0, total, final), 0.0, 1e-9) or not close(s(total, total, final), final, 1e-9):
            return "not_final"
        for step in (1, total // 4, total // 2, (3 * total) // 4):
            t = step / total
            got = s(step, total, final)
            if close(got, final * (1 - (1 - t) ** 3), 1e-6):
                continue
            if close(got, final * t, 1e-6):
                return "linear"
            if close(got, final * (1 - (1 - t) ** 2), 1e-6):
                return "square"
            return "wrong"
        for step in (total + 1, 2 * total, 3 * total):
            if not close(s(step, total, final), final, 1e-9):
                return "past_total"
    return None


# --- what the learner predicts and explains --------------------------------------------------------------------

prediction("05.gflops_saved", "Keeping half the tokens from block 2 on: how many times fewer GFLOPs do all the blocks "
                              "together do for the same batch?", unit="x")
prediction("05.speedup_b32", "Keep 0.5 from layer 2: how many times faster is the pruned model at batch 32?",
           unit="x")
written("05.why_batch1", "The pruned model does the same share of work less at batch 1 and at batch 32, yet its "
                         "measured speed-ups differ. Using the timings by length, explain why.", points=2)
