"""The kit's one fine-tuning loop: plain, with a teacher (distillation), or with hooks that keep masks or schedules.

Fine-tuning the baseline, recovery after pruning, quantization-aware training and gradual pruning all run here,
so they share the device handling, the learning-rate schedule and gradient clipping.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from labkit.core import data, memory, parts, settings

LEAN_MICRO_BATCH = 8  # lean training's slice of a batch: activations for 8 rows at a time (see `_backward`)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence from the teacher's softened predictions to the student's, per example, scaled by T^2 (so its
    gradients keep their size as T changes); the kit's one distillation loss (notebook 03b)."""
    target = torch.softmax(teacher_logits.detach() / temperature, -1)
    log_student = torch.log_softmax(student_logits / temperature, -1)
    return nn.functional.kl_div(log_student, target, reduction="batchmean") * temperature ** 2


def teacher_logits(teacher: nn.Module, inputs: dict) -> torch.Tensor:
    """The teacher's logits for a batch, without gradients."""
    with torch.no_grad():
        out = teacher(**parts.feed(teacher, inputs))
    return out.logits if hasattr(out, "logits") else out[0]


def _schedule(opt: torch.optim.Optimizer, steps: int, warmup: float, decay: bool):
    """transformers' linear warm-up then linear decay (constant after warm-up without `decay`)."""
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    warm = int(warmup * steps)
    if decay:
        return get_linear_schedule_with_warmup(opt, warm, steps)
    return get_constant_schedule_with_warmup(opt, warm)


@contextlib.contextmanager
def recomputed_activations(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within it, a transformers model keeps only each block's input in the forward pass and recomputes the rest
    during backward (activation checkpointing; dropout's random state is replayed, so the gradients are the same).

    Measured on MiniLM-L6 at batch 32: about 0.35 GB less at the peak for about 40% more time per step, a trade a
    classroom hub (1-2 GB for a kernel and Jupyter together) needs. A model that cannot recompute, or already
    does, is left as it is; the setting is restored on exit.
    """
    on = (enabled and getattr(model, "supports_gradient_checkpointing", False)
          and not getattr(model, "is_activation_checkpointing", True))
    if on:
        model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        yield
    finally:
        if on:
            model.activation_checkpointing_disable()
            model.disable_input_require_grads()  # the hook enable added on the embeddings' output


def input_embedding(model: nn.Module) -> nn.Parameter | None:
    """The input (word) embedding matrix `frozen_embeddings` freezes; None where there is none, or it is tied to an
    output layer (freezing it would freeze that layer too)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = out is not None and getattr(out, "weight", None) is weight
    return weight if isinstance(weight, nn.Parameter) and not tied else None


def copy_sharing_embedding(model: nn.Module, freeze: bool | None = None) -> nn.Module:
    """A copy of `model` to fine-tune with `fit` that shares the input embedding with `model` where `fit` freezes it
    (`freeze`; None: where memory is tight, as `fit` decides): never written there, it stays shared (MiniLM's is
    47 MB, half the baseline). Everything else is new; never hand the copy to a caller with the embedding shared."""
    frozen = input_embedding(model) if (memory.tight() if freeze is None else freeze) else None
    return parts.copy_sharing(model, lambda t: t if t is frozen else t.clone())


@contextlib.contextmanager
def frozen_embeddings(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within it, the input (word) embedding matrix is not trained: it gets no gradient and no AdamW moments.

    It is half of MiniLM's weights (30,522 x 384), so a fine-tune holds about 0.13 GB less at its peak, a trade a
    classroom hub (1-2 GB for a kernel and Jupyter together) needs. Recovery and quantization-aware training change the encoder, not the vocabulary, so
    they lose little. An embedding tied to an output layer, or one already frozen, is left as it is; the setting is
    restored on exit.
    """
    weight = input_embedding(model)
    on = enabled and weight is not None and weight.requires_grad
    if on:
        weight.requires_grad_(False)
    try:
        yield
    finally:
        if on:
            weight.requires_grad_(True)


def fit(model: nn.Module, tokenizer, texts, labels, steps: int, lr: float = 1e-4, batch_size: int = 32,
        seed: int = 0, warmup: float = 0.0, decay: bool = True, weight_decay: float = 0.0,
        teacher: nn.Module | None = None, temperature: float = 2.0,
        before_step: Callable[[int], None] | None = None, after_step: Callable[[int], None] | None = None,
        progress: bool = False, desc: str = "fine-tuning", precision: str = "fp32",
        lean: bool | None = None, freeze_embeddings: bool | None = None,
        loss_fn: Callable[[nn.Module, dict, torch.Tensor], torch.Tensor] | None = None) -> list[dict]:
    """Train `model` in place for `steps` batches of (texts, labels) on its own device; returns the loss history.

    With a `teacher`, half the loss pulls the model's output distribution towards the teacher's (distillation).
    `before_step(step)` runs before each forward (e.g. a pruning schedule); `after_step(step)` after each
    optimizer step (e.g. re-applying a mask, so a pruned weight is not revived).
    `precision` "bf16" runs forward and loss under bf16 autocast (weights stay fp32, the optimizer's master copy);
    "fp16" does the same in fp16 on CUDA, with a GradScaler so small gradients do not underflow to zero.
    `lean` trades time for memory, for classroom hubs (1-2 GB with Jupyter): activations recomputed in backward
    (`recomputed_activations`), AdamW fused (`fit_steps`), batches run in slices of `LEAN_MICRO_BATCH` rows whose
    gradients add up to the batch's, and freed pages handed back after every step (`memory.trim`); the same training
    up to rounding in the last bit, and up to dropout's masks where a batch is sliced. None (the default) is lean only where
    memory is tight (`memory.tight`: a hub's or Binder's MEM_LIMIT, a small cgroup limit, or LABKIT_LEAN=1).
    `freeze_embeddings` keeps the input embedding matrix as it is (`frozen_embeddings`): less memory, and not the
    same training; None (the default) freezes it where training is lean.
    `loss_fn(model, inputs, labels)` replaces the forward and the loss of a batch (slice): it runs the model on the
    inputs and returns the loss to minimise, e.g. distillation that matches hidden states too (notebook 03b). It
    takes the place of `teacher`: pass one or the other.
    """
    settings.flags(decay=decay, progress=progress)
    lean = memory.tight() if lean is None else lean
    freeze = lean if freeze_embeddings is None else freeze_embeddings
    from tqdm.auto import tqdm

    run = fit_steps(model, tokenizer, texts, labels, steps, lr=lr, batch_size=batch_size, seed=seed, warmup=warmup,
                    decay=decay, weight_decay=weight_decay, teacher=teacher, temperature=temperature,
                    before_step=before_step, after_step=after_step, precision=precision, fused=lean,
                    micro_batch=LEAN_MICRO_BATCH if lean else None, loss_fn=loss_fn)
    history = []
    with (frozen_embeddings(model, freeze), recomputed_activations(model, lean),
          tqdm(total=steps, desc=desc, disable=not progress) as bar):
        for record in run:
            if lean:
                memory.trim()  # batches differ in length: without it, the heap keeps every step's odd-sized holes
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    memory.release()  # AdamW's moments and the activations are freed now: give their pages back
    return history


def fit_steps(model: nn.Module, tokenizer, texts, labels, steps: int, lr: float = 1e-4, batch_size: int = 32,
              seed: int = 0, warmup: float = 0.0, decay: bool = True, weight_decay: float = 0.0,
              teacher: nn.Module | None = None, temperature: float = 2.0,
              before_step: Callable[[int], None] | None = None, after_step: Callable[[int], None] | None = None,
              precision: str = "fp32", fused: bool = False, micro_batch: int | None = None,
              loss_fn: Callable[[nn.Module, dict, torch.Tensor], torch.Tensor] | None = None) -> Iterator[dict]:
    """`fit`'s loop one step at a time: yields {"step", "loss"} after each optimizer step (arguments as in `fit`).

    Bad arguments raise here, before any step; the model is trained in place as the steps are taken, and is back
    in eval mode once the steps run out (or the generator is closed). Several runs can so be timed step by step
    in turn (see `precision.training_speed`). `fused` runs AdamW as one fused kernel (CPU or CUDA): no temporary
    per weight (about 90 MB less at MiniLM's peak), the same update up to rounding in the last bit. `micro_batch`
    runs forward and backward on slices of that many rows and adds up their gradients before the step (`_backward`).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    texts, labels = list(texts), list(labels)
    if steps and not texts:
        raise ValueError("No training texts were given; pass a non-empty training split.")
    dev = parts.device_of(model)
    mixed = autocast(dev, precision)  # a ValueError for an unknown precision, or fp16 off CUDA
    if precision != "fp32" and any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise ValueError(f"Mixed-precision training needs fp32 weights (the master copy), and this model is "
                         f"{parts.dtype_of(model)}; train the fp32 model, then cast it with to_precision.")
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1 (or None: whole batches), got {micro_batch}.")
    if loss_fn is not None and teacher is not None:
        raise ValueError("Pass a teacher or a loss_fn, not both: a loss_fn computes the whole loss, a teacher's "
                         "part included.")
    return _loop(model, tokenizer, texts, labels, steps, lr, batch_size, seed, warmup, decay, weight_decay, teacher,
                 temperature, before_step, after_step, dev, mixed, precision == "fp16",
                 fused and dev.type in ("cpu", "cuda"), micro_batch, loss_fn)


def _loop(model, tokenizer, texts, labels, steps, lr, batch_size, seed, warmup, decay, weight_decay, teacher,
          temperature, before_step, after_step, dev, mixed, scaled, fused, micro_batch, loss_fn) -> Iterator[dict]:
    scaler = torch.amp.GradScaler(dev.type) if scaled else None
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    sched = _schedule(opt, max(1, steps), warmup, decay)
    model.train()
    if teacher is not None:
        teacher.eval()  # no dropout in the targets
    step, epoch = 0, 0
    try:
        while step < steps:
            for batch in data.batches(texts, labels, tokenizer, batch_size, shuffle_seed=seed + epoch):
                if step >= steps:
                    break
                if before_step is not None:
                    before_step(step)
                loss = _backward(model, batch.to(dev), teacher, temperature, mixed, scaler, micro_batch, loss_fn)
                if scaler is None:
                    nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                else:  # the loss was scaled up for backward; unscale before clipping; the step is skipped on inf/nan
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(params, 1.0)
                    scaler.step(opt)
                    scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step(step)
                step += 1
                yield {"step": step - 1, "loss": loss}
            epoch += 1
    finally:
        model.eval()


def _backward(model: nn.Module, batch: data.Batch, teacher, temperature: float, mixed, scaler,
              micro_batch: int | None, loss_fn=None) -> float:
    """Forward and backward of one batch, in slices of `micro_batch` rows where given; returns the batch's loss.

    Each slice's mean loss is weighted by its share of the rows, so the gradients add up to the whole batch's (each
    slice draws its own dropout masks). Activations are held for one slice at a time. Measured on the fast baseline
    at batch 32, lean otherwise: a step's peak above the model and its AdamW state was 0.31-0.34 GB whole,
    0.21-0.22 GB in slices of 16 and 0.13-0.14 GB in slices of 8, for 10% more time (6 steps: 5.1 s, 5.1 s, 5.6 s).
    """
    n = len(batch.labels)
    size = micro_batch or n
    total = 0.0
    for start in range(0, n, size):
        inputs = {k: v[start:start + size] for k, v in batch.inputs.items()}
        labels = batch.labels[start:start + size]
        with mixed:
            if loss_fn is not None:
                loss = loss_fn(model, parts.feed(model, inputs), labels)
            else:
                out = model(**parts.feed(model, inputs), labels=labels)
                loss = out.loss
                if teacher is not None:
                    loss = 0.5 * loss + 0.5 * distill_loss(out.logits, teacher_logits(teacher, inputs), temperature)
        share = len(labels) / n
        (loss * share if scaler is None else scaler.scale(loss * share)).backward()
        total += float(loss.detach()) * share
    return total


def autocast(device: torch.device | str | nn.Module, precision: str):
    """A context that runs forwards in `precision` (torch.autocast), or does nothing for fp32.

    Weights stay fp32 (the master copy the optimizer updates); matmuls inside run in bf16 or fp16. fp16 on a
    CPU is refused: without loss scaling its narrow range underflows gradients, and CPUs do bf16 instead.
    """
    dtype = parts.precision_dtype(precision)
    dev = parts.device_of(device) if isinstance(device, nn.Module) else torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype == torch.float16 and dev.type != "cuda":
        raise ValueError(f"Mixed-precision fp16 is for CUDA (with a GradScaler); on {dev.type} use 'bf16', "
                         "which has fp32's range and needs no loss scaling.")
    return torch.autocast(dev.type, dtype=dtype)
