"""A causal LM's decoder blocks one at a time, on calibration tokens: what GPTQ's sequential calibration and AWQ's
block-wise search walk through.

GPTQ (IST-DASLab/gptq, llama.py) and AWQ (mit-han-lab/llm-awq, pre_quant.py) both catch the hidden states that
enter the first block, with the arguments the model hands every block (RoPE's cos and sin, the attention mask),
then run the blocks one by one: a block's inputs are the previous block's outputs. GPTQ takes them from the
already quantized blocks (each layer is fitted to the errors made before it); AWQ from the float blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labkit.core.parts import device_of
from labkit.lm.slm import decoder_family, decoder_linears, input_source


class _Caught(Exception):
    """Raised by the hook on the first block once its inputs are recorded: nothing after it needs to run."""


@dataclass
class BlockInputs:
    """The hidden states entering a block, one tensor [batch, seq, hidden] per batch of calibration sequences, and
    the keyword arguments the model passes each block for that batch (position embeddings, attention mask)."""

    hidden: list[torch.Tensor]
    kwargs: list[dict]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a supported causal LM (model.model.layers for a Llama)."""
    out = model
    for part in decoder_family(model).blocks.split("."):
        out = getattr(out, part)
    return out


@torch.no_grad()
def first_block_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int = 4) -> BlockInputs:
    """What enters the first decoder block for the calibration token ids [n, seq], batch by batch."""
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"ids must be a non-empty [sequences, tokens] tensor, got shape {tuple(ids.shape)}.")
    first = blocks_of(model)[0]
    caught = BlockInputs([], [])

    def catch(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        caught.hidden.append(hidden.detach())
        caught.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Caught

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for start in range(0, len(ids), batch_size):
            try:
                model(input_ids=ids[start:start + batch_size].to(device_of(model)), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return caught


def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """The block's outputs on every batch: the next block's inputs."""
    out = []
    with torch.no_grad():
        for h, kw in zip(inputs.hidden, inputs.kwargs):
            y = block(h, **kw)
            out.append(y[0] if isinstance(y, tuple) else y)
    return BlockInputs(out, inputs.kwargs)


def input_groups(model: nn.Module, index: int) -> list[list[str]]:
    """Block `index`'s Linear layers (full names) in forward order, grouped by the input they share: for a Llama
    [q, k, v], [o], [gate, up], [down], the order of GPTQ's `--true-sequential`."""
    prefix = f"{decoder_family(model).blocks}.{index}."
    groups: dict[str, list[str]] = {}
    for name in decoder_linears(model):
        if name.startswith(prefix):
            groups.setdefault(input_source(model, name), []).append(name)
    return list(groups.values())


def record_inputs(model: nn.Module, block: nn.Module, inputs: BlockInputs, names: list[str]) -> torch.Tensor:
    """The inputs [tokens, in] that the first of `names` (layers reading one tensor) sees when the block runs.
    The block stops there: what comes after the layer is not needed."""
    layer = dict(model.named_modules())[names[0]]
    seen: list[torch.Tensor] = []

    def catch(module, args):
        seen.append(args[0].detach().flatten(0, -2))
        raise _Caught

    handle = layer.register_forward_pre_hook(catch)
    try:
        for h, kw in zip(inputs.hidden, inputs.kwargs):
            try:
                with torch.no_grad():
                    block(h, **kw)
            except _Caught:
                pass
    finally:
        handle.remove()
    return torch.cat(seen).float()
