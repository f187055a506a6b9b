"""Notebook 05 (dynamic pruning): tokens kept at run time, the cubic sparsity schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given


def _keep_count() -> int:
    return math.ceil(0.3 * 26)  # ceil(7.8)


@exercise("05.keep_count",
          "A snippet of 26 real tokens ([CLS] and [SEP] included) goes through token pruning with keep_ratio=0.3. "
          "How many tokens do the later layers see?",
          _keep_count,
          {"round_down": "rounding down could leave a short snippet with no token at all; keep_count rounds UP.",
           "wrong": "keep_count keeps ceil(keep_ratio * real length) tokens: multiply, then round UP."})
def _check_keep_count(answer: Any) -> str | None:
    answer = float(given(answer))
    if answer in (math.floor(0.3 * 26), 7.8):
        return "round_down"
    return None if answer == _keep_count() else "wrong"


def _cubic_midpoint() -> float:
    return 0.8 * (1 - (1 - 50 / 100) ** 3)


@exercise("05.cubic_midpoint",
          "A cubic schedule from 0 to 80% sparsity over 100 steps: what sparsity is reached at step 50?",
          _cubic_midpoint,
          {"linear": "that is a straight line; the cubic schedule prunes fast early: s = final * (1 - (1 - t/T)^3).",
           "wrong": "s = final * (1 - (1 - step/total)**3): at half time most of the pruning is already done."})
def _check_cubic_midpoint(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 0.4):
        return "linear"
    return None if close(answer, _cubic_midpoint()) else "wrong"


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
                          "[CLS], so force it in, e.g. give it score +inf before ranking.",
           "padding_kept": "a padding position was kept while a real token was dropped: rank padding last, e.g. "
                           "scores.masked_fill(mask == 0, float('-inf')).",
           "order": "the right tokens, in the wrong order: topk returns them by score. Sort the kept indices "
                    "(.sort(dim=1).values) so [CLS] stays first and the sentence keeps its order.",
           "gather": "the indices are right but the hidden states are not hidden[b, idx[b, j], :]: gather along "
                     "dim 1 (the sequence) with the index expanded over the features, "
                     "idx.unsqueeze(-1).expand(-1, -1, dim).",
           "shape": "return kept hidden states of shape (batch, keep, dim) and indices of shape (batch, keep): "
                    "`keep` tokens in every row.",
           "wrong": "per row: padding to -inf, [CLS] to +inf, the top `keep` indices by score, sorted; then gather "
                    "those positions of hidden along dim 1."},
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
          "Write cubic_schedule(step, total, final): the target sparsity final * (1 - (1 - step/total)^3), which "
          "stays at `final` for every step >= total.",
          _cubic_schedule,
          {"not_final": "at step = total the schedule must be exactly `final` (1 - (1 - 1)^3 = 1), and 0 at step 0: "
                        "check the formula is not inside out, s = final * (1 - (1 - t/T)**3).",
           "linear": "that is a straight line, final * t / T. The cubic schedule prunes FAST early, while the "
                     "network has many weights to spare, and slowly at the end: final * (1 - (1 - t/T)**3).",
           "square": "the exponent is 3, not 2: (1 - t/T)**3.",
           "past_total": "past step = total the value must stay at `final`: (1 - t/T) turns negative, and cubed it "
                         "overshoots. Clamp the step first, t = min(step, total).",
           "wrong": "s = final * (1 - (1 - min(step, total) / total) ** 3)."},
          kind="code", uses="prune_while_training(model, tok, 0.7, steps, fn): the target sparsity of every "
                            "fine-tuning step")
def _check_cubic_schedule(answer: Any) -> str | None:
    def s(step: int, total: int, final: float) -> float:
        value = attempt(answer, step, total, final)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise Mistake("wrong_type", f"return a number, got {type(value).__name__}") from None

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
