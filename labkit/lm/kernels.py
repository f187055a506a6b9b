"""Low-bit kernels that really run a causal LM on this CPU, and their speed beside fp32 (notebook 08's kernel table).

Rounded float weights are as slow as fp32: only a kernel that computes with the packed codes is faster. Here:
bf16, torch's dynamic int8 Linear (labkit.quant.int8, the kit's one dynamic int8 path), torch's own CPU int4 matmul
running RTN's 4-bit codes (`Int4Linear`), and torchao's int4 configurations where torchao imports.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import warnings

import pandas as pd
import torch
from torch import nn

from labkit.core import parts, settings
from labkit.core.memory import release
from labkit.lm.generation import bf16, tokens_per_second
from labkit.lm.perplexity import Perplexity, agreement
from labkit.lm.slm import check_causal_lm, decoder_linears
from labkit.lm.weightonly import check_group, group_params, quantize_codes
from labkit.quant.int8 import dynamic_int8


class Int4Linear(nn.Module):
    """A Linear layer stored as packed 4-bit codes (RTN's, groups of `group_size`), run by torch's CPU int4 kernel."""

    def __init__(self, linear: nn.Linear, group_size: int = 32):
        super().__init__()
        w = linear.weight.detach().float()
        scale, offset = group_params(w, 4, group_size)  # RTN's grid: each group's min-max, float16 as stored
        codes = quantize_codes(w, scale, offset, 4, group_size).to(torch.int32)
        self.in_features, self.out_features, self.group_size = w.shape[1], w.shape[0], group_size
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))  # 2 codes a byte
        # The kernel computes with (q - 8) * scale + zero per group: zero = offset + 8 * scale gives q * scale + offset
        # back, the very weights RTN rounds to. It reads them as [in // group_size, out, 2].
        self.register_buffer("scale_zero", torch.stack([scale, offset + 8 * scale], dim=-1).transpose(0, 1)
                             .contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scale_zero.to(x.dtype))
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def int4_kernel(model: nn.Module, group_size: int = 32, inplace: bool = False) -> nn.Module:
    """A copy sharing no tensor with `model` (the model itself with `inplace`) whose decoder Linear layers are
    Int4Linear (RTN 4-bit codes, torch's CPU int4 kernel)."""
    settings.flags(inplace=inplace)
    for name, layer in decoder_linears(model).items():
        check_group(layer.in_features, group_size, name)
    out = model if inplace else parts.copy_sharing(model)  # the Linear layers are replaced, never written
    for name, layer in decoder_linears(out).items():
        parts.set_module(out, name, Int4Linear(layer, group_size))
    return (out if inplace else parts.unshare(out, model)).eval()


def buffer_bytes(model: nn.Module) -> int:
    """Bytes the decoder blocks really hold in memory (parameters and buffers: packed codes, scales, norms)."""
    fam = check_causal_lm(model)
    blocks = model.get_submodule(fam.blocks)
    return sum(t.numel() * t.element_size() for t in list(blocks.parameters()) + list(blocks.buffers()))


def _module_bytes(module: nn.Module) -> int:
    """Bytes of a module's own parameters and buffers; torch.ao's dynamic int8 Linear keeps its int8 weight (and a
    float32 scale per tensor or per channel) in packed params that `parameters()` does not list."""
    total = sum(t.numel() * t.element_size() for t in list(module.parameters(recurse=False))
                + list(module.buffers(recurse=False)))
    weight = getattr(module, "weight", None)
    if callable(weight) and not isinstance(weight, torch.Tensor):  # torch.ao.nn.quantized.dynamic.Linear
        w = weight()
        scales = w.q_per_channel_scales().numel() if w.qscheme() in (torch.per_channel_affine,
                                                                      torch.per_channel_symmetric) else 1
        total += w.numel() * w.element_size() + 4 * scales
        bias = module.bias()
        total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


def decode_bytes(model: nn.Module) -> int:
    """Bytes one decode step reads from memory, batch 1: every weight, scale and norm of the decoder blocks, the
    final norm and the whole head at its stored dtype (a tied head is read in full at every step, though it shares
    its storage with the embedding table, of which a step reads one row). The KV cache is not counted."""
    fam = check_causal_lm(model)
    inside = [model.get_submodule(fam.blocks), model.get_output_embeddings()]
    norm = getattr(getattr(model, "model", None), "norm", None)
    return sum(_module_bytes(m) for part in inside + ([norm] if norm is not None else []) for m in part.modules())


TORCHAO_CONFIGS = ("Int4WeightOnlyConfig", "IntxWeightOnlyConfig(int4)", "Int8DynamicActivationIntxWeightConfig(int4)")


def torchao_int4(model: nn.Module, config: str, group_size: int = 32) -> nn.Module:
    """A copy with torchao's `config` (one of TORCHAO_CONFIGS) on the decoder Linear layers; torchao's error if not.

    torchao is not a labkit dependency (it is measured where it imports); ImportError when it is not installed.
    Returns a new model; the input is unchanged.
    """
    import torchao.quantization as ao
    from torchao.quantization.granularity import PerGroup

    makers = {
        "Int4WeightOnlyConfig": lambda: ao.Int4WeightOnlyConfig(group_size=group_size),
        "IntxWeightOnlyConfig(int4)": lambda: ao.IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                                      granularity=PerGroup(group_size)),
        "Int8DynamicActivationIntxWeightConfig(int4)": lambda: ao.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)),
    }
    if config not in makers:
        raise ValueError(f"Unknown torchao config {config!r}; choose one of {', '.join(makers)}.")
    names = set(decoder_linears(model))
    out = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao.quantize_(out, makers[config](), filter_fn=lambda m, fqn: fqn in names)
    return out.eval()


def kernel_makers(model: nn.Module, group_size: int = 32) -> dict:
    """Every precision labkit can run a causal LM in besides fp32, as builders (name -> function making a copy).

    bf16, torch's dynamic int8, torch's CPU int4 kernel (RTN codes) on fp32 and on bf16 activations, and torchao's
    int4 configurations where torchao imports (it is not a labkit dependency).
    """
    check_causal_lm(model)
    makers = {"bf16": lambda: bf16(model), "dynamic int8 (torch.ao)": lambda: dynamic_int8(model, "all"),
              f"int4 g{group_size} torch kernel, fp32 activations": lambda: int4_kernel(model, group_size),
              f"int4 g{group_size} torch kernel, bf16 activations":
                  lambda: int4_kernel(bf16(model), group_size, inplace=True)}
    if importlib.util.find_spec("torchao") is not None:
        version = importlib.metadata.version("torchao")
        makers |= {f"torchao {version} {cfg} g{group_size}": (lambda cfg=cfg: torchao_int4(model, cfg, group_size))
                   for cfg in TORCHAO_CONFIGS}
    return makers


def try_kernel(make) -> tuple[nn.Module | None, str]:
    """(the model `make()` builds, "ran") when it runs one forward here; (None, "failed: <the error>") otherwise.
    What is not a torch module (another runtime, such as a llama_cpp.Llama) is returned untried."""
    try:
        m = make()
        if isinstance(m, nn.Module):
            with torch.inference_mode():
                m(input_ids=(torch.arange(16)[None] + 100).to(next(m.parameters()).device))
        return m, "ran"
    except Exception as err:  # noqa: BLE001 - which precision fails here, and why, is the result
        return None, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"


def kernel_speeds(model: nn.Module, tokenizer, makers: dict | None = None, base: Perplexity | None = None,
                  **timing) -> pd.DataFrame:
    """Each precision timed beside fp32, in pairs, one copy alive at a time: prefill and decode tokens/s and their
    ratios to fp32 in the same rounds (tokens_per_second; `timing` goes to it), the megabytes one decode step reads
    (decode_bytes), or the error it failed with. A maker may build another runtime (a llama_cpp.Llama on the same
    GGUF file): it is timed the same way; its bytes and quality are not measured here.

    With `base` (the fp32 model's perplexity), each precision's perplexity on the same chunks is measured while its
    copy is alive, with its paired ratio to fp32, and the KL divergence and top-1 agreement against fp32 (agreement)."""
    rows = {}
    for name, make in (makers or kernel_makers(model)).items():
        m, status = try_kernel(make)
        row = {"status": status}
        if m is not None:
            t = tokens_per_second({"fp32": model, name: m}, tokenizer, **timing)
            row |= t.loc[name].to_dict() | {
                "fp32_prefill_tok_s": t.loc["fp32", "prefill_tok_s"],
                "fp32_decode_tok_s": t.loc["fp32", "decode_tok_s"],
                "prefill_x": t.loc[name, "prefill_tok_s"] / t.loc["fp32", "prefill_tok_s"],
                "decode_x": t.loc[name, "decode_tok_s"] / t.loc["fp32", "decode_tok_s"]}
            if isinstance(m, nn.Module):
                # what one decode step reads, the head included: the bound decode speed answers to
                row |= {"decode_MB": decode_bytes(m) / 1e6, "fp32_decode_MB": decode_bytes(model) / 1e6}
            if base is not None and isinstance(m, nn.Module):
                a = agreement(m, model, tokenizer, tokens=base.tokens, chunk=base.chunk, second_half=base.second_half)
                row |= {"ppl": a.perplexity.ppl, "perplexity [95% CI]": str(a.perplexity),
                        "x fp32's [95% CI]": str(a.perplexity.ratio(base)), "KL nats/token": a.kl,
                        "top-1 agreement %": 100 * a.top1}
        del m
        release()
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
