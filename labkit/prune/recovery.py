"""Recovery: a short fine-tune of a pruned model, its zeros held at zero (notebook 03 writes it)."""

from __future__ import annotations

import torch
from torch import nn

from labkit import fast_mode
from labkit.core import data, parts, settings, train


def recover(model: nn.Module, tokenizer, steps: int | None = None, lr: float = 1e-4, batch_size: int = 32,
            teacher: nn.Module | None = None, precision: str = "fp32", inplace: bool = False) -> nn.Module:
    """A copy of a pruned `model` fine-tuned for `steps` batches of the train split, its zero weights held at zero.
    With a `teacher` (the unpruned model), half the loss follows the teacher's outputs (distillation)."""
    if teacher is not None and next(teacher.parameters()).device != next(model.parameters()).device:
        raise ValueError("The teacher and the model are on different devices: move the teacher to the model's "
                         "device first (teacher.to(device)).")
    out = model if inplace else parts.clone(model)
    layers = parts.linears(out, "blocks")
    keep = {name: layer.weight != 0 for name, layer in layers.items()}  # where a weight may be non-zero

    def hold_zeros(step: int) -> None:
        with torch.no_grad():  # the optimizer step moved every weight: put the pruned ones back to zero
            for name, layer in layers.items():
                layer.weight.mul_(keep[name])

    steps = (20 if fast_mode() else 100) if steps is None else steps
    train_split = data.split("train")
    train.fit(out, tokenizer, train_split["text"], train_split["label"], steps, lr=lr, batch_size=batch_size,
              teacher=teacher, precision=precision, after_step=hold_zeros, desc="recovery")
    return out.eval()


# The lesson's text above; its boolean argument is checked here, outside what the lesson shows.
recover = settings.with_flags(recover, "inplace")
