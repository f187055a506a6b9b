"""The article's two snippets, reproduced in the kit's own code, next to what they were meant to do."""

from __future__ import annotations

import numpy as np
import torch

from labkit.core import data, machine, memory, parts
from labkit.core import train as lk_train


def article_quantize(params: list[np.ndarray]) -> None:
    """What the article's 'quantization' does: a loop that casts float32 arrays to float64.

    Rebinding the loop variable changes nothing the caller holds, and nothing is returned.
    Even done 'right' (see `cast_float64`) the cast doubles memory; it is not quantization.
    """
    for p in params:
        if p.dtype == np.float32:
            p = p.astype(np.float64)  # noqa: F841 - the point: this copy is dropped


def article_prune(param: np.ndarray) -> np.ndarray:
    """What the article's 'pruning' does to one array: keep values < 0, then of those keep values > 0.

    The result is a 1-D array (the shape is gone) and, since no value is both, it is empty.
    """
    p = param.astype(np.float64)
    p = p[p < 0]
    p = p[p > 0]
    return p


def cast_float64(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model in float64: the article's idea done so it runs. Twice the bytes."""
    return parts.clone(model).double()


def int8_roundtrip(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """A correct 8-bit affine round trip of one tensor: (int8 codes, dequantized tensor, scale, zero point)."""
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero_point = int(round(-128 - lo / scale))
    q = torch.clamp(torch.round(w / scale) + zero_point, -128, 127).to(torch.int8)
    return q, (q.float() - zero_point) * scale, scale, zero_point


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A correct magnitude mask: the smallest |w| set to zero, shape kept, so the layer still works."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
    k = int(round(sparsity * w.numel()))
    if k == 0:
        return w.clone()
    threshold = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() > threshold, w, torch.zeros_like(w))


# --- what speeds up TRAINING (the article's claim): mixed precision, measured -------------------------

def native_bf16() -> bool:
    """True when this CPU has bfloat16 instructions (AVX512-BF16 or AMX), so bf16 autocast can run faster."""
    flags = (machine.cpuinfo("flags") or "").split()
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def _precisions(device: torch.device) -> dict[str, torch.dtype | None]:
    # CPUs autocast to bfloat16 (same range as float32, no loss scaling needed); GPUs to float16, whose narrow
    # range needs a GradScaler so small gradients do not underflow to zero.
    return {"fp32": None, "bf16 autocast" if device.type == "cpu" else "fp16 autocast + GradScaler":
            torch.bfloat16 if device.type == "cpu" else torch.float16}


def training_step_times(model: torch.nn.Module, tokenizer, steps: int = 3, batch_size: int = 16,
                        warmup: int = 1) -> dict[str, dict]:
    """Time fine-tuning steps (forward, backward, AdamW) in float32 and in mixed precision, interleaved.

    The precisions take turns, step by step, on the same real training snippets, so drift on a busy machine hits
    both alike. They share one copy of `model` and one AdamW: a copy with its gradients and AdamW's two moments is
    four times the weights, and a step costs the same whatever values the weights hold, so a second copy would
    only double the memory (a classroom hub gives 1-2 GB). Returns {precision: {median_ms, steps, batch_size,
    loss}}, the loss being that precision's last step's.
    """

    if steps < 1 or batch_size < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, warmup >= 0; got {steps}, {batch_size}, {warmup}.")
    import statistics

    dev = next(model.parameters()).device
    train = data.split("train", limit=batch_size * (steps + warmup))
    batches = [b.to(dev) for b in data.batches(train["text"], train["label"], tokenizer, batch_size, shuffle_seed=0)]
    m = parts.clone(model).train()
    # Where memory is tight, as train.fit does there: AdamW fused (no temporary per weight: the peak of this function
    # fell from 1.09 to 1.02 GiB with the fast baseline, batch 16) and the word embeddings frozen (no gradient and no
    # moments for half the weights). Both precisions take the same steps, so the comparison stays fair.
    tight = memory.tight()
    with lk_train.frozen_embeddings(m, tight):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5,
                                fused=(tight and dev.type in ("cpu", "cuda")) or None)
        times, losses = _alternate_steps(m, opt, batches, _precisions(dev), warmup, steps, dev)
    del m, opt  # the copy, its gradients and AdamW's state: freed, and given back to the system
    memory.release()
    return {name: {"median_ms": statistics.median(ts), "steps": steps, "batch_size": batch_size,
                   "loss": losses[name]} for name, ts in times.items()}


def _alternate_steps(m, opt, batches, precisions, warmup, steps, dev) -> tuple[dict, dict]:
    """`training_step_times`' loop: each precision takes a step in turn; (times in ms, last losses) per precision."""
    import time

    runs = {name: (dtype, torch.amp.GradScaler(dev.type) if dtype == torch.float16 else None)
            for name, dtype in precisions.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    losses: dict[str, float] = {}
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        for name, (dtype, scaler) in runs.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                loss = m(**parts.feed(m, batch.inputs), labels=batch.labels).loss
            if scaler is not None:  # scale the loss up so fp16 gradients do not underflow, unscale before the step
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
            losses[name] = float(loss.detach())
            memory.trim()  # untimed: hands back the step's freed activations, so the heap does not grow per step
    return times, losses
