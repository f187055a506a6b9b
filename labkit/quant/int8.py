"""Real int8 on the CPU: torch's dynamic int8 Linear (int8 weights, each batch's activation scale at run time), the
one dynamic int8 path every lesson and the tour use, with int8 embedding tables where asked."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from labkit.core import parts


def dynamic_int8(model: nn.Module, filter_fn="all", inplace: bool = False) -> nn.Module:
    """A CPU model whose Linear layers picked by `filter_fn` (see `parts.linears`) run torch's dynamic int8 kernels.

    torch.ao's `quantize_dynamic` (deprecated, and still the CPU's int8 Linear) makes the weights int8 once, one
    scale per tensor by default; each batch's activations get their own scale at run time. The result shares no
    tensor with `model` unless `inplace`.
    """
    from torch.ao.quantization import quantize_dynamic  # deprecated module: imported only when used

    names = set(parts.linears(model, filter_fn))
    if not names:
        raise ValueError(f"filter_fn {filter_fn!r} picks no Linear layer of {type(model).__name__}; "
                         f"use one of {', '.join(parts.FILTERS)} or a function (module, fqn) -> bool.")
    out = parts.cpu_target(model, inplace, "torch's dynamic int8 Linear").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation is for us, not the learner
        quantize_dynamic(out, names, dtype=torch.qint8, inplace=True)
    return out if inplace else parts.unshare(out, model)
