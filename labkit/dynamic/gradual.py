"""Gradual magnitude pruning: sparsity raised step by step during fine-tuning on a cubic schedule (notebook 05).
"""

from __future__ import annotations

import math
from typing import Callable

import pandas as pd
import torch
from torch import nn

from labkit.core import data, train
from labkit.dynamic import int8


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
    """Greedy step: the new keep-mask removes the smallest surviving |w| until `sparsity` of the entries are gone."""
    n_prune = int(round(sparsity * weight.numel()))
    already = int((~keep).sum())
    if n_prune <= already:
        return keep
    score = weight.detach().abs().masked_fill(~keep, -1.0).flatten()  # pruned weights stay pruned
    idx = torch.topk(score, n_prune, largest=False).indices
    new = torch.ones_like(score, dtype=torch.bool)
    new[idx] = False
    return new.view_as(keep)


def _apply(model_linears: dict[str, nn.Linear], keep: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, lin in model_linears.items():
            lin.weight.mul_(keep[name])


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over the encoder's Linear layers."""
    ws = [lin.weight for lin in int8.linears(model).values()]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


Schedule = Callable[[int, int, float], float]  # (step, total, final_sparsity) -> target sparsity at that step


def _target_sparsity(schedule: str | Schedule, step: int, total: int, final_sparsity: float) -> float:
    """The target sparsity a schedule (a name or a function) gives at `step` of a ramp of `total` steps."""
    if schedule == "oneshot":
        return final_sparsity
    if schedule == "cubic":
        return cubic_schedule(step, total, final_sparsity)
    value = schedule(step, total, final_sparsity)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"schedule({step}, {total}, {final_sparsity}) returned {value!r}, not a number; check it "
                         "with checks.check('05.cubic_schedule', fn) first.") from None
    if not 0 <= value < 1 or math.isnan(value):
        raise ValueError(f"schedule({step}, {total}, {final_sparsity}) returned {value}, not a sparsity in [0, 1).")
    return value


def prune_finetune(model: nn.Module, tokenizer, final_sparsity: float, steps: int,
                   schedule: str | Schedule = "cubic", ramp: float = 0.7, batch_size: int = 16, lr: float = 5e-5,
                   seed: int = 0, inplace: bool = False, teacher: nn.Module | None = None
                   ) -> tuple[nn.Module, pd.DataFrame]:
    """Fine-tune while pruning encoder Linears by magnitude: 'cubic' (gradual) or 'oneshot' (all at step 0).

    The cubic schedule reaches `final_sparsity` after `ramp` of the steps; the rest recover at that sparsity.
    `schedule` may also be your own function `(step, total, final_sparsity) -> sparsity` (notebook 05), called with
    total = the ramp's steps and steps past it, so it must stay at `final_sparsity` after `total`.
    Both take the same `steps` optimizer steps on the same batches, so only the pruning schedule differs.
    With a `teacher` (the dense model), half the loss is distillation towards its outputs (as prune.recover).
    Returns the pruned model and its history (step, target sparsity, loss).
    """
    if not 0 < ramp <= 1:
        raise ValueError(f"ramp must be a fraction of the steps in (0, 1], got {ramp!r}.")
    if schedule not in ("cubic", "oneshot") and not callable(schedule):
        raise ValueError(f"schedule must be 'cubic', 'oneshot' or a function (step, total, final) -> sparsity, "
                         f"got {schedule!r}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    cubic_schedule(0, steps, final_sparsity)  # validates final_sparsity
    model = model if inplace else train.copy_to_fit(model)  # the embedding fit freezes stays shared
    lins = int8.linears(model)
    keep = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in lins.items()}
    ramp_steps = max(1, int(ramp * steps))
    targets: list[float] = []

    def before_step(step: int) -> None:
        target = _target_sparsity(schedule, step, ramp_steps, final_sparsity)
        if not targets or target != targets[-1]:  # greedy: remove the smallest surviving weights up to this target
            for n, lin in lins.items():
                keep[n] = prune_smallest(lin.weight, keep[n], target)
        targets.append(target)
        _apply(lins, keep)

    def after_step(step: int) -> None:
        _apply(lins, keep)  # the optimizer step must not revive pruned weights

    train_split = data.split("train")
    # A constant learning rate (no warm-up, no decay): the schedule that varies is the sparsity's.
    history = train.fit(model, tokenizer, train_split["text"], train_split["label"], steps, lr=lr,
                        batch_size=batch_size, seed=seed, decay=False, teacher=teacher, temperature=2.0,
                        before_step=before_step, after_step=after_step, desc="pruning while fine-tuning")
    return model, pd.DataFrame([{"step": h["step"], "sparsity": t, "loss": h["loss"]}
                                for h, t in zip(history, targets)])
