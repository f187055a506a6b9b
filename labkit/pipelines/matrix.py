"""The family x technique matrix: every public technique run on a tiny random classifier of every family.

Each cell either works (the forward runs, the input model is unchanged, and the intended effect is measured:
fewer parameters, the right zeros, int8 modules, fewer tokens) or is a clear refusal (a ValueError naming the
supported families). `python -m labkit matrix` prints it; the README holds the same table, and a test keeps
them equal.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from labkit.core import assets, parts
from labkit.dynamic import int8, tokens
from labkit.pipelines import pipeline
from labkit.prune import prune
from labkit.quant import quantize
from labkit.runtimes import onnx
from labkit.sparse import sparse

TEXTS = ["a quietly moving film that earns its ending", "dull", "neither funny nor sad, just long and loud"]


@dataclass
class Cell:
    """One family x technique outcome: 'works' (with the measured effect) or 'refuses' (with the message)."""
    family: str
    technique: str
    status: str
    effect: str


def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.dtype != torch.bfloat16 else
                 v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def _inputs(model: nn.Module, tokenizer) -> dict:
    enc = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))  # ONNX/OpenVINO wrappers: CPU
    return parts.feed(model, {k: v.to(dev) for k, v in enc.items()})


def _logits(model, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out[0]


def _block_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in parts.linears(model, "blocks").values()]


def _zero_fraction(model: nn.Module) -> float:
    ws = _block_weights(model)
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def _int8_modules(model: nn.Module) -> int:
    """Modules that compute with int8 weights: torch's quantized Linear and labkit's int8 layers."""
    return sum(1 for m in model.modules()
               if "quantized" in type(m).__module__ or type(m).__name__.startswith(("Int8", "IntegerLinear")))


def _block_params(model: nn.Module) -> int:
    return sum(p.numel() for b in parts.blocks(model) for p in b.module.parameters())


# Each check gets (input model, tokenizer) and returns (output model, effect text); it raises when the effect is
# missing. The input model must come out unchanged: the caller checks that.

def _simulated_quantization(model, tok):
    out = quantize.fake_quantize(model, 4, granularity="channel")
    levels = max(int(torch.unique(w[i]).numel()) for w in _block_weights(out) for i in range(w.shape[0]))
    assert levels <= 16, f"a row has {levels} distinct values after 4-bit rounding"
    return out, f"<= {levels} levels per row"


def _real_int8(model, tok):
    out = quantize.to_int8(model)
    n = _int8_modules(out)
    assert n >= len(parts.linears(model, "blocks")), f"only {n} int8 modules"
    return out, f"{n} int8 modules"


def _magnitude(model, tok):
    out = prune.magnitude(model, 0.5)
    z = _zero_fraction(out)
    assert abs(z - 0.5) < 0.01, f"{z:.3f} of block weights are zero"
    head = parts.head_linears(out)
    assert all(int((m.weight == 0).sum()) == 0 for m in head.values()), "the head was pruned"
    return out, f"{z:.0%} zeros, head dense"


def _two_four(model, tok):
    out = prune.two_four(model)
    ok = all(bool(((w.reshape(-1, 4) == 0).sum(1) >= 2).all()) for w in _block_weights(out))
    assert ok, "a group of four keeps more than two weights"
    return out, "2 of every 4 zero"


def _structured(model, tok):
    out = prune.structured(model, heads=0.25, ffn=0.5)
    before, after = _block_params(model), _block_params(out)
    assert after < before, "no block parameter was removed"
    return out, f"{1 - after / before:.0%} fewer block parameters"


def _sparse(model, tok):
    out = sparse.to_sparse(model, 0.9)
    n = sum(1 for m in out.modules() if type(m).__name__ == "SparseLinear")
    assert n == 2 * len(parts.blocks(model)), f"{n} SparseLinear layers"
    return out, f"{n} CSR layers"


def _token_pruning(model, tok):
    out = tokens.token_pruning(model, 0.5, 1)
    inputs = _inputs(out, tok)
    _logits(out, inputs)
    width, n = tokens.last_kept(out).shape[1], inputs["input_ids"].shape[1]
    assert width < n, "no token was dropped"
    return out, f"{width} of {n} positions kept"


def _dynamic_int8(model, tok):
    out = int8.dynamic_int8(model)
    n = _int8_modules(out)
    assert n > 0, "no int8 module"
    return out, f"{n} int8 modules"


def _onnx(model, tok):
    out = onnx.to_onnx(model)
    inputs = _inputs(model, tok)
    diff = float((_logits(out, {k: v.cpu() for k, v in inputs.items()}) - _logits(model, inputs).cpu()).abs().max())
    assert diff < 1e-3, f"ONNX logits differ by {diff:.2g}"
    return out, f"max |diff| {diff:.0e}"


def _pipeline(model, tok):
    out = pipeline.run_pipeline(model, tok, [("structured", {"heads": 0.25, "ffn": 0.5}), ("int8", {})])
    assert _int8_modules(out) > 0, "no int8 module"
    return out, "structured -> int8"


TECHNIQUES: dict[str, Callable] = {
    "simulated quantization": _simulated_quantization,
    "real int8": _real_int8,
    "magnitude pruning": _magnitude,
    "2:4 pruning": _two_four,
    "structured pruning": _structured,
    "sparse (CSR)": _sparse,
    "token pruning": _token_pruning,
    "dynamic int8": _dynamic_int8,
    "ONNX export": _onnx,
    "pipeline": _pipeline,
}


def run_cell(family: str, technique: str, tokenizer, device: str = "cpu") -> Cell:
    """Run `technique` on a tiny classifier of `family` on `device`: 'works' with its effect, or 'refuses'."""
    model = parts.tiny_classifier(family, num_labels=3).to(device)
    before = _state_hash(model)
    try:
        out, effect = TECHNIQUES[technique](model, tokenizer)
    except ValueError as err:
        if parts.SUPPORTED.split(",")[0] not in str(err):
            raise  # a ValueError that does not name the supported families is not a clear refusal
        return Cell(family, technique, "refuses", str(err).split(". ")[0])
    assert _state_hash(model) == before, f"{technique} changed the input {family} model"
    logits = _logits(out, _inputs(out, tokenizer))
    assert logits.shape == (len(TEXTS), 3) and bool(torch.isfinite(logits).all()), "bad logits"
    where = next((p.device.type for p in out.parameters()), "cpu")
    return Cell(family, technique, "works", effect if where == torch.device(device).type else f"{effect} (on {where})")


def run_all(tokenizer=None, device: str = "cpu") -> list[Cell]:
    """Every cell of the matrix, with the tiny models on `device`."""
    tokenizer = tokenizer or assets.load_tokenizer()
    cells = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in parts.FAMILIES:
            for tech in TECHNIQUES:
                cells.append(run_cell(fam.name, tech, tokenizer, device))
    return cells


def markdown(cells: list[Cell]) -> str:
    """The matrix as a Markdown table: a row per technique, a column per family, 'works' or 'refuses'."""
    fams = [f.name for f in parts.FAMILIES]
    status = {(c.technique, c.family): c.status for c in cells}
    lines = ["| technique | " + " | ".join(fams) + " |", "| --- |" + " --- |" * len(fams)]
    for tech in TECHNIQUES:
        lines.append(f"| {tech} | " + " | ".join(status.get((tech, f), "?") for f in fams) + " |")
    return "\n".join(lines)
