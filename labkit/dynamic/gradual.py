"""Gradual magnitude pruning: sparsity raised step by step during fine-tuning on a cubic schedule (notebook 05).

Notebook 05 writes the greedy step and the training loop (`prune_smallest`, `prune_while_training`, saved here as
it shows them); `prune_finetune` adds the named schedules, the checks and the copy, for the benchmarks and tests.
"""

from __future__ import annotations

import math
from typing import Callable

import pandas as pd
import torch
from torch import nn

from labkit.core import data, parts, settings, train
from labkit.prune import masks


def cubic_schedule(step: int, total: int, final_sparsity: float, initial: float = 0.0) -> float:
    """Sparsity at `step` of `total`: initial + (final - initial) * (1 - (1 - step/total)^3), fast early, flat late."""
    if not 0 <= final_sparsity < 1:
        raise ValueError(f"final_sparsity must be in [0, 1) (1 would remove every weight), got {final_sparsity!r}.")
    if not 0 <= initial <= final_sparsity:
        raise ValueError(f"initial must be in [0, final_sparsity={final_sparsity}], got {initial!r}.")
    if total < 1 or step < 0:
        raise ValueError(f"Need total >= 1 and step >= 0, got step={step}, total={total}.")
    t = min(step, total) / total
    return initial + (final_sparsity - initial) * (1 - (1 - t) ** 3)


def prune_smallest(weight: torch.Tensor, keep: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Greedy step: a keep-mask that also drops the smallest surviving |w| until `sparsity` of the entries are gone."""
    scores = weight.detach().abs().masked_fill(~keep, -1.0)  # pruned weights score lowest: they stay pruned
    already = int((~keep).sum())  # and a lower target never revives them
    return masks.smallest_mask(scores, max(already, round(sparsity * weight.numel())))


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over the Linear layers of the model's transformer blocks."""
    weights = [layer.weight for layer in parts.linears(model, "blocks").values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def prune_while_training(model: nn.Module, tokenizer, final_sparsity: float, steps: int, schedule,
                         ramp: float = 0.7, lr: float = 5e-5, batch_size: int = 16,
                         teacher: nn.Module | None = None) -> list[dict]:
    """Fine-tune `model` in place while pruning its blocks' Linear weights by magnitude; one record per step.

    `schedule(step, ramp_steps, final_sparsity)` gives each step's target: the ramp takes `ramp` of the steps, the
    rest recover at `final_sparsity`. With a `teacher`, half the loss is distillation towards its outputs.
    """
    layers = parts.linears(model, "blocks")
    keep = {name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in layers.items()}
    ramp_steps = max(1, int(ramp * steps))
    targets = []

    def apply_masks(step):  # also after each optimizer step: it must not revive a pruned weight
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.mul_(keep[name])

    def before_step(step):
        target = schedule(step, ramp_steps, final_sparsity)
        if not targets or target != targets[-1]:  # a new target: drop the smallest survivors up to it
            for name, layer in layers.items():
                keep[name] = prune_smallest(layer.weight, keep[name], target)
        targets.append(target)
        apply_masks(step)

    rows = data.split("train")
    # A constant learning rate (no warm-up, no decay): the schedule that varies is the sparsity's.
    history = train.fit(model, tokenizer, rows["text"], rows["label"], steps, lr=lr, batch_size=batch_size,
                        decay=False, teacher=teacher, before_step=before_step, after_step=apply_masks,
                        desc="pruning while fine-tuning")
    return [dict(record, sparsity=target) for record, target in zip(history, targets)]


Schedule = Callable[[int, int, float], float]  # (step, total, final_sparsity) -> target sparsity at that step


def _checked(schedule: Schedule) -> Schedule:
    """`schedule`, with a ValueError that says what to do when it returns something other than a sparsity."""
    def checked(step: int, total: int, final_sparsity: float) -> float:
        value = schedule(step, total, final_sparsity)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"schedule({step}, {total}, {final_sparsity}) returned {value!r}, not a number; check "
                             "it with checks.check('05.cubic_schedule', fn) first.") from None
        if not 0 <= value < 1 or math.isnan(value):
            raise ValueError(f"schedule({step}, {total}, {final_sparsity}) returned {value}, not a sparsity in "
                             "[0, 1).")
        return value
    return checked


def _oneshot(step: int, total: int, final_sparsity: float) -> float:
    return final_sparsity


def prune_finetune(model: nn.Module, tokenizer, final_sparsity: float, steps: int,
                   schedule: str | Schedule = "cubic", ramp: float = 0.7, batch_size: int = 16, lr: float = 5e-5,
                   inplace: bool = False, teacher: nn.Module | None = None) -> tuple[nn.Module, pd.DataFrame]:
    """A copy of `model` fine-tuned while its blocks' Linears are pruned: 'cubic' (gradual) or 'oneshot' (step 0).

    The cubic schedule reaches `final_sparsity` after `ramp` of the steps; the rest recover at that sparsity.
    `schedule` may also be a function `(step, total, final_sparsity) -> sparsity` (notebook 05), called with
    total = the ramp's steps and steps past it, so it must stay at `final_sparsity` after `total`.
    Both take the same `steps` optimizer steps on the same batches, so only the pruning schedule differs.
    Returns the pruned model (its own weights; `inplace=True` trains `model`) and its history (step, sparsity, loss).
    """
    settings.flags(inplace=inplace)
    if not 0 < ramp <= 1:
        raise ValueError(f"ramp must be a fraction of the steps in (0, 1], got {ramp!r}.")
    if schedule not in ("cubic", "oneshot") and not callable(schedule):
        raise ValueError(f"schedule must be 'cubic', 'oneshot' or a function (step, total, final) -> sparsity, "
                         f"got {schedule!r}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    cubic_schedule(0, steps, final_sparsity)  # validates final_sparsity
    fn = {"cubic": cubic_schedule, "oneshot": _oneshot}.get(schedule) if isinstance(schedule, str) \
        else _checked(schedule)
    model = model if inplace else parts.clone(model)
    history = prune_while_training(model, tokenizer, final_sparsity, steps, fn, ramp, lr, batch_size, teacher)
    return model, pd.DataFrame(history, columns=["step", "sparsity", "loss"])
