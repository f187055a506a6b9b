"""Affine quantization, the one set of primitives under every technique in the kit (notebook 02 teaches it, and
shows this module's code in its `#@save` cells).

A float x becomes an integer code q and back through a scale and a zero point:
    q = clamp(round(x / scale) + zero_point, qmin, qmax)        x ~ (q - zero_point) * scale
or, with zero_point_domain="float" (the zero point is a float offset, as llama.cpp's Q4_1 and GPTQ store it):
    q = clamp(round((x - offset) / scale), qmin, qmax)           x ~ q * scale + offset

Each block of `block_size` elements shares one scale and zero point, in the shape torchao uses: `x.shape` is one
block (per tensor), `(1, in_features)` one per row (per channel), `(1, 32)` groups of 32 along each row.
"""

from __future__ import annotations

import math

import torch

from labkit.core import settings

MAPPINGS = ("asymmetric", "symmetric")
ZERO_POINT_DOMAINS = ("int", "float")
EPS = torch.finfo(torch.float32).eps  # the smallest scale: a constant block would otherwise divide by zero


def qrange(bits: int, mapping: str = "asymmetric", restricted: bool = False) -> tuple[int, int]:
    """The codes of a `bits`-bit grid: 0 .. 2^b - 1 (asymmetric) or -2^(b-1) .. 2^(b-1) - 1 (symmetric).

    `restricted` drops the most negative symmetric code (-127 .. 127 for 8 bits), so the grid is symmetric around 0.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 1 to 16, got {bits!r}.")
    _check(mapping, MAPPINGS, "mapping")
    if mapping == "asymmetric":
        if restricted:
            raise ValueError("restricted=True is for the symmetric mapping; an asymmetric grid uses all its codes.")
        return 0, 2 ** bits - 1
    top = 2 ** (bits - 1) - 1
    return (-top if restricted else -top - 1), top


# The lesson's text above; its boolean argument is checked here, outside what the lesson shows.
qrange = settings.with_flags(qrange, "restricted")


def _check(value: str, allowed: tuple[str, ...], name: str) -> None:
    """A ValueError naming the choices, when `value` is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}.")


def block_size_for(x: torch.Tensor, granularity: str, group_size: int | None = None) -> tuple[int, ...]:
    """The block size of a granularity: 'tensor' (one block), 'channel' (one per row) or 'group' (`group_size`
    consecutive values along each row)."""
    if granularity == "tensor":
        return tuple(x.shape)
    if x.dim() < 2:
        raise ValueError(f"granularity {granularity!r} needs a 2-D weight (rows = output channels); this tensor has "
                         f"shape {tuple(x.shape)}: use granularity='tensor'.")
    if granularity == "channel":
        return (1,) * (x.dim() - 1) + (x.shape[-1],)
    if granularity == "group":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
        n = x.shape[-1]
        if n % group_size:
            divisors = [d for d in (16, 32, 64, 128, 256) if n % d == 0] or [n]
            raise ValueError(f"group_size {group_size} does not divide the {n} inputs of this weight; use a divisor "
                             f"of {n} such as {divisors}.")
        return (1,) * (x.dim() - 1) + (group_size,)
    raise ValueError(f"Unknown granularity {granularity!r}; choose one of 'tensor', 'channel', 'group'.")


def _blocked(x: torch.Tensor, block_size: tuple[int, ...]) -> torch.Tensor:
    """`x` viewed as [n0 / b0, b0, n1 / b1, b1, ...]: block i of dimension d is index i on axis 2d. A (1536, 384)
    weight in blocks of (1, 64) becomes (1536, 1, 6, 64): reducing over axes 1 and 3 gives one value per group."""
    block_size = tuple(block_size)
    if len(block_size) != x.dim():
        raise ValueError(f"block_size {block_size} needs one entry per dimension of the tensor {tuple(x.shape)}.")
    shape = []
    for n, b in zip(x.shape, block_size):
        if b < 1 or n % b:
            raise ValueError(f"block size {b} does not divide the dimension {n} of {tuple(x.shape)}; use a "
                             f"divisor of {n}.")
        shape += [n // b, b]
    return x.reshape(shape)


def choose_qparams_affine(x: torch.Tensor, mapping: str, block_size: tuple[int, ...], qmin: int, qmax: int,
                          eps: float = EPS, scale_dtype: torch.dtype | None = None,
                          zero_point_domain: str = "int") -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each block of `x`, from its min and max: tensors of shape x.shape / block_size.

    asymmetric, int domain (torch's MinMaxObserver): the range is first widened to hold 0.0, so 0.0 has a code of its
    own; scale = (hi - lo) / (qmax - qmin), zero_point = qmin - round(lo / scale), an integer code.
    asymmetric, float domain: offset = lo and scale = (hi - lo) / (qmax - qmin), the range as it is.
    symmetric: zero_point = 0 and scale = max(|lo|, |hi|) / ((qmax - qmin) / 2).
    `scale_dtype` rounds the scale (and a float offset) to the dtype they are stored in, e.g. torch.float16.
    """
    blocks = _blocked(x.detach().float(), block_size)
    dims = tuple(range(1, blocks.dim(), 2))  # the axes inside a block
    return choose_qparams_affine_with_min_max(blocks.amin(dim=dims), blocks.amax(dim=dims), mapping, qmin, qmax, eps,
                                              scale_dtype, zero_point_domain)


def choose_qparams_affine_with_min_max(lo: torch.Tensor | float, hi: torch.Tensor | float, mapping: str, qmin: int,
                                       qmax: int, eps: float = EPS, scale_dtype: torch.dtype | None = None,
                                       zero_point_domain: str = "int") -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of ranges already known (an observer's [lo, hi]), by the formulas of
    `choose_qparams_affine`: one pair per element of `lo` and `hi`."""
    _check(mapping, MAPPINGS, "mapping")
    _check(zero_point_domain, ZERO_POINT_DOMAINS, "zero_point_domain")
    if qmin >= qmax:
        raise ValueError(f"qmin must be below qmax, got {qmin} and {qmax}.")
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    store = (lambda t: t) if scale_dtype is None else (lambda t: t.to(scale_dtype).float())
    if zero_point_domain == "float":
        if mapping != "asymmetric":
            raise ValueError("zero_point_domain='float' is an asymmetric grid's offset; use mapping='asymmetric'.")
        lo = store(lo)
        return store(torch.clamp((hi - lo) / (qmax - qmin), min=eps)), lo
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if mapping == "symmetric":
        scale = store(torch.clamp(torch.maximum(-lo, hi) / ((qmax - qmin) / 2), min=eps))
        return scale, torch.zeros_like(scale, dtype=torch.int64)
    scale = store(torch.clamp((hi - lo) / (qmax - qmin), min=eps))
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int64)
    return scale, zero_point


def code_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The smallest integer dtype holding qmin..qmax: uint8, int8, else int32."""
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    return torch.int32


def _spread(t: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """A per-block tensor shaped to broadcast over the blocked view: [n0 / b0, 1, n1 / b1, 1, ...]."""
    t = torch.as_tensor(t)
    counts = blocks.shape[0::2]
    if t.numel() != math.prod(counts):
        raise ValueError(f"{t.numel()} scales or zero points for {math.prod(counts)} blocks; make them with "
                         "choose_qparams_affine and the same block_size.")
    shape = [d for n in counts for d in (n, 1)]
    return t.reshape(shape).to(blocks.device)


def quantize_affine(x: torch.Tensor, block_size: tuple[int, ...], scale: torch.Tensor, zero_point: torch.Tensor,
                    qmin: int, qmax: int, zero_point_domain: str = "int",
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """Integer codes of `x`, each block on its own grid; `dtype` defaults to the smallest that holds qmin..qmax."""
    _check(zero_point_domain, ZERO_POINT_DOMAINS, "zero_point_domain")
    blocks = _blocked(x.detach().float(), block_size)
    s, z = _spread(scale, blocks), _spread(zero_point, blocks)
    if zero_point_domain == "float":
        codes = torch.clamp(torch.round((blocks - z) / s), qmin, qmax)
    else:
        codes = torch.clamp(torch.round(blocks / s) + z, qmin, qmax)
    return codes.reshape(x.shape).to(dtype or code_dtype(qmin, qmax))


def dequantize_affine(codes: torch.Tensor, block_size: tuple[int, ...], scale: torch.Tensor,
                      zero_point: torch.Tensor, zero_point_domain: str = "int",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Floats back from codes: (q - zero_point) * scale, or q * scale + offset in the float domain."""
    _check(zero_point_domain, ZERO_POINT_DOMAINS, "zero_point_domain")
    blocks = _blocked(codes.float(), block_size)
    s, z = _spread(scale, blocks), _spread(zero_point, blocks)
    out = blocks * s + z if zero_point_domain == "float" else (blocks - z) * s
    return out.reshape(codes.shape).to(dtype)


def fake_quantize_affine(x: torch.Tensor, mapping: str, block_size: tuple[int, ...], qmin: int, qmax: int,
                         zero_point_domain: str = "int", eps: float = EPS,
                         scale_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The values `x` becomes on its grid: quantize then dequantize, in x's dtype (simulated quantization)."""
    scale, zp = choose_qparams_affine(x, mapping, block_size, qmin, qmax, eps, scale_dtype, zero_point_domain)
    codes = quantize_affine(x, block_size, scale, zp, qmin, qmax, zero_point_domain, torch.int32)
    return dequantize_affine(codes, block_size, scale, zp, zero_point_domain, x.dtype)


def packed_bytes(numel: int, bits: int, blocks: int, scale_bytes: int = 4, zero_point_bytes: int = 0) -> int:
    """Bytes of `numel` codes packed at `bits` bits each, plus a scale (and zero point) per block."""
    return math.ceil(numel * bits / 8) + blocks * (scale_bytes + zero_point_bytes)
