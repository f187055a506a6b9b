"""Knowledge distillation (notebook 03b): a shallower student from the teacher's lower layers or from scratch, trained
to match the teacher's softened logits and hidden states through `train.fit`'s `loss_fn`; students are cached like
the baseline, so the tour and notebook 06 reuse them."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import cache, checkpoint, data, parts, results, train
from labkit.core import model as model_mod
from labkit.quant.floats import to_precision
from labkit.quant.int8 import dynamic_int8
from labkit.runtimes import openvino

RECIPE = 2  # bump when how a student is built or trained changes: every cached student becomes stale
LR = 5e-4  # one rate for every student, low enough that the 3-layer labels-only student from the lower blocks learns
# (at 1e-3 every labels-only student answers one class, and the teacher would only be getting training started)
STEPS = 30 if fast_mode() else 300  # a student's batches: half the fast baseline's fine-tune; else about one epoch
TEMPERATURE = 2.0  # the default; notebook 03b compares it with 4 on validation. The tour and notebook 06 use this one


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer each student layer imitates: student layer i (from 1) to teacher layer k*i, k = the ratio
    of depths, so the last student layer matches the teacher's last (3 of 6: [2, 4, 6]; 2 of 6: [3, 6])."""
    if student_layers < 1 or teacher_layers % student_layers:
        raise ValueError(f"a student of {student_layers} layers cannot map evenly onto {teacher_layers}.")
    k = teacher_layers // student_layers
    return [k * i for i in range(1, student_layers + 1)]


def hidden_loss(student_hidden, teacher_hidden, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between each student layer's output and its teacher layer's (`layer_map`), over the real
    tokens only (`mask` 1), averaged over the mapped layers. Hidden states as transformers returns them: the
    embeddings' output first, then one per layer."""
    mapping = layer_map(len(student_hidden) - 1, len(teacher_hidden) - 1)
    real = mask.bool()
    losses = [nn.functional.mse_loss(student_hidden[i][real], teacher_hidden[t][real].detach())
              for i, t in enumerate(mapping, start=1)]
    return torch.stack(losses).mean()


def student(teacher: nn.Module, layers: int, init: str = "lower", seed: int = 0) -> nn.Module:
    """A new classifier like `teacher` with `layers` transformer blocks: its embeddings, first `layers` blocks, pooler
    and head copied from the teacher (init="lower", layer pruning), or all of them new (init="scratch")."""
    if init not in ("lower", "scratch"):
        raise ValueError(f"init must be 'lower' or 'scratch', got {init!r}.")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        small = type(teacher)(config)
    if init == "lower":
        shapes = small.state_dict()
        small.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in shapes})
    return small.to(next(teacher.parameters()).device).eval()


def distillation(teacher: nn.Module, temperature: float = TEMPERATURE, alpha: float = 0.5, beta: float = 1.0):
    """`train.fit`'s loss_fn: alpha x cross-entropy on the labels + (1 - alpha) x the softened-logit loss
    (`train.distill_loss`) + beta x `hidden_loss`. With alpha=1 and beta=0 it is plain fine-tuning on the labels."""
    def loss_fn(model: nn.Module, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        out = model(**inputs, labels=labels, output_hidden_states=True)
        if alpha == 1 and beta == 0:
            return out.loss
        with torch.no_grad():
            target = teacher(**inputs, output_hidden_states=True)
        soft = train.distill_loss(out.logits, target.logits, temperature)
        hidden = hidden_loss(out.hidden_states, target.hidden_states, inputs["attention_mask"])
        return alpha * out.loss + (1 - alpha) * soft + beta * hidden
    return loss_fn


# --- what the lesson does not show: the students' cache and the tour's rows ---------------------------------------


def _key(teacher: nn.Module, layers: int, init: str, distilled: bool, steps: int, temperature: float,
         seed: int) -> dict:
    return {"recipe": RECIPE, "data_hash": data.split_hash(), "teacher": model_mod.state_sha256(teacher),
            "layers": layers, "init": init, "teacher_signal": distilled,
            "temperature": temperature if distilled else None, "steps": steps, "lr": LR, "seed": seed}


def student_path(key: dict) -> Path:
    """Where the student of `key` (`_key`'s record) is cached: <labkit cache>/students/."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    kind = "distilled" if key["teacher_signal"] else "labels"
    return cache.cache_dir() / "students" / f"student-{key['layers']}L-{key['init']}-{kind}-{digest}.safetensors"


def trained_student(teacher: nn.Module, tokenizer, layers: int = 3, init: str = "lower", distilled: bool = True,
                    steps: int | None = None, temperature: float = TEMPERATURE, seed: int = 0,
                    progress: bool = False) -> nn.Module:
    """A `student` trained for `steps` batches of the train split, with the teacher (`distillation`) or on the labels
    alone (same steps, data order and seed); cached under a key of the data, the teacher's weights, the depth,
    the initialisation, the signal, the steps and the temperature, so a second call loads it."""
    steps = STEPS if steps is None else steps
    key = _key(teacher, layers, init, distilled, steps, temperature, seed)
    path = student_path(key)
    if path.exists():
        try:
            meta = checkpoint.checked_meta(path)
            if all(meta.get(k) == v for k, v in key.items()):
                small = student(teacher, layers, "scratch", seed)
                return checkpoint.read_weights_into(small, path).to(parts.device_of(teacher)).eval()
        except (ValueError, OSError):
            pass  # a damaged or stale record: train again below
    small = student(teacher, layers, init, seed)
    rows = data.split("train")
    loss = distillation(teacher, temperature) if distilled else distillation(teacher, temperature, alpha=1, beta=0)
    train.fit(small, tokenizer, rows["text"], rows["label"], steps, lr=LR, batch_size=32, seed=seed, warmup=0.06,
              weight_decay=0.01, loss_fn=loss, progress=progress, desc=f"student {layers}L {init}")
    if cache.cache_writable():
        checkpoint.save_checkpoint(small, path, key)
    return small.eval()


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None,
         steps: int | None = None) -> list[results.Result]:
    """Rows for `python -m labkit tour`: a student with half of `model`'s blocks (3 of the baseline's 6; the largest
    even share of a depth that halves unevenly), from its lower blocks and distilled, alone, with dynamic int8 and in
    bf16, and through OpenVINO's int8 where it is installed; timed beside `model`. A model of one block, or a
    family without `num_hidden_layers` in its config (DistilBERT), is skipped with the reason."""
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    layers = max((d for d in range(1, depth // 2 + 1) if depth % d == 0), default=0) if isinstance(depth, int) else 0
    if not layers or parts.family_of(model).name == "DistilBERT":
        results.skip_row("distilled student", f"a student needs a config with num_hidden_layers of 2 or more; "
                                              f"this model has {depth}")
        return []
    name = f"distilled student ({layers} layer{'s' if layers > 1 else ''})"
    small = trained_student(model, tokenizer, layers, "lower", True, steps)
    models = {name: small, f"{name} + int8": dynamic_int8(small), f"{name} + bf16": to_precision(small, "bf16")}
    what = "half the blocks, from the teacher's lower layers, distilled (logits and hidden states)"
    notes = {name: what, f"{name} + int8": f"{what}; dynamic int8 Linear layers (torch)",
             f"{name} + bf16": f"{what}; bf16 weights"}
    if openvino.available():
        try:
            models[f"{name} + openvino int8"] = openvino.to_openvino(small, int8=True, tokenizer=tokenizer)
            notes[f"{name} + openvino int8"] = f"{what}; OpenVINO with NNCF's static int8"
        except (ValueError, RuntimeError) as err:
            results.skip_row(f"{name} + openvino int8", str(err))
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
