"""Where the time goes: this machine's roof (memory bandwidth, peak multiply-adds per dtype), what a forward pass
costs (multiply-adds and bytes moved, layer by layer), and the speed-up the roofline predicts from the two.

`stream`, `matmul_peak` and `linear_cost` are notebook 00c's own code (its `#@save` cells). A layer's time is
bounded below by max(multiply-adds / peak, bytes / bandwidth); a model's by the sum over its layers. A module the
walker does not know makes the prediction None with its reason: a roofline of a guess would teach the wrong thing.

A module declares its own cost with a method `roofline_cost(batch, tokens)` returning a list of `Op`s or of
(name, multiply-adds, bytes, dtype) tuples, dtype a torch dtype or a name (labkit's CSR layers, the ONNX Runtime
and OpenVINO wrappers); a token-pruned model is read from its `token_pruning` record.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from labkit.core import cache, machine, parts
from labkit.core.measure import compare_latency

MIB = 2 ** 20
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
PEAK_SIZES = (512, 1024, 2048)  # square matmuls: the largest usually saturates a CPU; the table shows whether it did


def last_level_cache() -> int | None:
    """Bytes of the largest CPU cache the OS reports (Linux sysfs), or None where it cannot be read."""
    sizes = []
    for folder in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (folder / "size").read_text().strip()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if match:
            sizes.append(int(match.group(1)) * {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}[match.group(2)])
    return max(sizes) if sizes else None


def stream_bytes() -> int:
    """Bytes of each STREAM array: 4x the last-level cache, at least 64 MiB and at most 128 MiB (three arrays must
    fit beside the notebook's memory budget; where the cache is larger the table says so)."""
    llc = last_level_cache() or 32 * MIB
    return int(min(max(4 * llc, 64 * MIB), 128 * MIB))


def stream(n_bytes: int, warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """STREAM's copy (b = a) and triad (a = b + s*c) on float32 arrays of n_bytes each: GB/s of bytes moved, from
    the fastest round (as STREAM reports: the roof is what the machine reaches, not what a busy moment leaves)."""
    n = n_bytes // 4
    a, b, c = torch.ones(n), torch.ones(n), torch.ones(n)
    kernels = {"copy": lambda: b.copy_(a),  # reads a, writes b: 2 arrays of traffic
               "triad": lambda: torch.add(b, c, alpha=3.0, out=a)}  # reads b and c, writes a: 3 arrays
    moved = {"copy": 2 * n_bytes, "triad": 3 * n_bytes}
    timing = compare_latency(kernels, warmup=warmup, repeats=repeats)
    return {name: moved[name] / (min(timing[name]["times_ms"]) / 1000) / 1e9 for name in kernels}


def matmul_peak(dtype: str, sizes=PEAK_SIZES, warmup: int = 1, repeats: int = 3) -> dict[int, float]:
    """GMAC/s (10^9 multiply-adds a second) of an n x n x n matmul in `dtype` ('fp32', 'bf16' or 'int8'), per n,
    from the fastest round.

    int8 runs torch._int_mm (int8 x int8 -> int32), the kernel torch's int8 layers call."""
    gen = torch.Generator().manual_seed(0)
    runs, operands = {}, []
    for n in sizes:
        if dtype == "int8":
            a = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=gen)
            b = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=gen)
            runs[n] = lambda a=a, b=b: torch._int_mm(a, b)
        else:
            a = torch.randn(n, n, generator=gen).to(DTYPES[dtype])
            b = torch.randn(n, n, generator=gen).to(DTYPES[dtype])
            runs[n] = lambda a=a, b=b: a @ b
        operands.append((a, b))
    timing = compare_latency(runs, warmup=warmup, repeats=repeats)
    return {n: n ** 3 / (min(timing[n]["times_ms"]) / 1000) / 1e9 for n in sizes}


@dataclass
class Roof:
    """This machine's roof: bandwidth (GB/s, copy and triad) and peak GMAC/s per dtype, at `threads` threads."""

    copy_gbs: float
    triad_gbs: float
    peaks: dict[str, float]  # GMAC/s: 'fp32', 'bf16', 'int8'
    cpu: str = field(default_factory=machine.cpu_name)
    threads: int = field(default_factory=torch.get_num_threads)
    array_mib: float = 0.0  # the STREAM arrays' size
    peak_sizes: dict[str, dict] = field(default_factory=dict)  # GMAC/s per matmul size, to see saturation

    @property
    def bandwidth(self) -> float:
        """Bytes per second: the better of copy and triad (the roof is what the machine can reach)."""
        return max(self.copy_gbs, self.triad_gbs) * 1e9

    def peak(self, dtype: str) -> float | None:
        """Multiply-adds per second in `dtype`, or None where it was not measured."""
        gmacs = self.peaks.get(dtype)
        return None if gmacs is None else gmacs * 1e9

    def ridge(self, dtype: str) -> float | None:
        """The ridge point: multiply-adds per byte above which a layer in `dtype` is compute-bound."""
        peak = self.peak(dtype)
        return None if peak is None else peak / self.bandwidth


def int8_matmul_available() -> bool:
    """True where torch has its int8 x int8 -> int32 matmul on the CPU."""
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        torch._int_mm(torch.ones(32, 32, dtype=torch.int8), torch.ones(32, 32, dtype=torch.int8))
    except RuntimeError:
        return False
    return True


def roof_from(bw: dict[str, float], per_size: dict[str, dict], array_bytes: int) -> Roof:
    """The Roof of `stream`'s bandwidths and `matmul_peak`'s GMAC/s per size of each dtype (the best size kept)."""
    return Roof(bw["copy"], bw["triad"], {d: max(v.values()) for d, v in per_size.items()},
                array_mib=array_bytes / MIB, peak_sizes=per_size)


def measure_roof(array_bytes: int | None = None, sizes=PEAK_SIZES) -> Roof:
    """Measure this machine now: STREAM copy and triad, then the matmul peak of each dtype (its best size)."""
    array_bytes = array_bytes or stream_bytes()
    bw = stream(array_bytes)
    per_size = {d: matmul_peak(d, sizes) for d in DTYPES if d != "int8" or int8_matmul_available()}
    return roof_from(bw, per_size, array_bytes)


_MEASURED: dict[str, Roof] = {}  # the roof this process measured or read, so results can predict beside timing


def _cache_file() -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", machine.cpu_name()).strip("-").lower()
    return cache.cache_dir() / "roofline" / f"{slug}-{torch.get_num_threads()}threads.json"


def remember(roof: Roof) -> Roof:
    """Make `roof` this process's roof (`current`) and cache it for this CPU and thread count (the tour reads it)."""
    if cache.cache_writable():
        cache.atomic_write_bytes(_cache_file(), json.dumps(asdict(roof)).encode())
    _MEASURED["roof"] = roof
    return roof


def measured(refresh: bool = False) -> Roof:
    """This machine's roof at the current thread count: read from the kit's cache, or measured and cached."""
    path = _cache_file()
    if not refresh and path.exists():
        try:
            roof = Roof(**json.loads(path.read_text()))
            roof.peak_sizes = {d: {int(n): g for n, g in v.items()} for d, v in roof.peak_sizes.items()}
            _MEASURED["roof"] = roof
            return roof
        except (ValueError, TypeError):  # an older or damaged file: measure again
            pass
    return remember(measure_roof())


def keep(bw: dict[str, float], per_size: dict[str, dict], array_bytes: int) -> Roof:
    """The roof a notebook measured (`stream`, `matmul_peak` per dtype), made this process's and cached."""
    return remember(roof_from(bw, per_size, array_bytes))


def current() -> Roof | None:
    """The roof measured (or read) in this process by `measured`, or None."""
    return _MEASURED.get("roof")


# --- what a forward pass costs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One layer's work in one forward: multiply-adds, bytes moved (weights and activations), the peak it runs at."""

    name: str
    macs: float
    bytes: float
    dtype: str  # 'fp32', 'bf16', 'int8': which peak bounds it; 'memory' for a layer with no multiply-adds

    @property
    def intensity(self) -> float:
        """Multiply-adds per byte moved."""
        return self.macs / self.bytes if self.bytes else math.inf


@dataclass
class Cost:
    """A forward's ops, and the modules the walker could not cost (then no prediction is made)."""

    ops: list[Op]
    unknown: list[str] = field(default_factory=list)

    @property
    def macs(self) -> float:
        return sum(o.macs for o in self.ops)

    @property
    def bytes(self) -> float:
        return sum(o.bytes for o in self.ops)


def linear_cost(layer: nn.Linear, rows: int, act_bytes: int = 4) -> tuple[int, int]:
    """(multiply-adds, bytes moved) of a Linear applied to `rows` vectors whose elements take `act_bytes` bytes."""
    macs = rows * layer.in_features * layer.out_features
    weights = layer.weight.numel() * layer.weight.element_size()
    if layer.bias is not None:
        weights += layer.bias.numel() * layer.bias.element_size()
    activations = rows * (layer.in_features + layer.out_features) * act_bytes  # read x, write y
    return macs, weights + activations


def _dynamic_int8_types() -> tuple[type, ...]:
    return (torch.ao.nn.quantized.dynamic.Linear,)


def _dynamic_int8_op(name: str, layer: nn.Module, rows: int) -> Op:
    """torch's dynamic int8 Linear: int8 weights; fp32 activations read, quantized (read again, int8 written),
    multiplied, and the int32 result written back as fp32: the per-batch work a static int8 layer does not do."""
    fin, fout = layer.in_features, layer.out_features
    weights = fin * fout + 4 * fout  # int8 weight, fp32 bias
    activations = rows * (fin * 4 + fout * 4) + rows * fin * (4 + 1)
    return Op(name, rows * fin * fout, weights + activations, "int8")


def _tokens_per_block(model: nn.Module, n_blocks: int, tokens: int) -> list[int]:
    pruned = getattr(model, "token_pruning", None)
    if not pruned:
        return [tokens] * n_blocks
    kept = max(1, math.ceil(pruned["keep_ratio"] * tokens))  # ranked and cut on each snippet's real tokens
    return [tokens if i < pruned["start_layer"] else kept for i in range(n_blocks)]


def attention_op(name: str, batch: int, tokens: int, heads: int, head_size: int, act_bytes: int) -> Op:
    """QK^T and the scores times V in one block: 2 x tokens^2 x head_size multiply-adds per head; bytes of Q, K, V
    read, the scores written and read back, the context written."""
    width = heads * head_size
    macs = 2 * batch * heads * tokens * tokens * head_size
    moved = act_bytes * (4 * batch * tokens * width + 2 * batch * heads * tokens * tokens)
    return Op(name, macs, moved, "attention")


def cost(model: nn.Module, batch: int, tokens: int, linear=linear_cost) -> Cost:
    """Multiply-adds and bytes of one forward of `batch` snippets of `tokens` word pieces, layer by layer.

    nn.Linear at its weight's dtype (activations in that dtype), torch's dynamic int8 Linear as int8 with its
    activation quantization, a module's own `roofline_cost(batch, tokens)`, the attention products of each block,
    embeddings and LayerNorms as bytes only. Elementwise work (GELU, softmax, residual adds) is left out of every
    model alike. `linear` computes a float Linear's (macs, bytes) (the notebook plugs in the learner's)."""
    if callable(getattr(model, "roofline_cost", None)):
        return Cost(declared(model, batch, tokens))
    ops, unknown = [], []
    blocks = parts.blocks(model)
    per_block = _tokens_per_block(model, len(blocks), tokens)
    prefixes = [(b.prefix + ".", t) for b, t in zip(blocks, per_block)]
    done: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(d + ".") for d in done):
            continue  # inside a module that declared its own cost
        t = next((t for p, t in prefixes if name.startswith(p)), None)
        rows = batch * (tokens if t is None else t)
        if callable(getattr(mod, "roofline_cost", None)):
            ops += declared(mod, batch, tokens if t is None else t, name)
            done.append(name)
        elif isinstance(mod, _dynamic_int8_types()):
            ops.append(_dynamic_int8_op(name, mod, rows if t is not None else batch))
        elif isinstance(mod, nn.Linear):
            dtype = parts.DTYPE_NAMES.get(mod.weight.dtype)
            if dtype is None:
                unknown.append(f"{name} ({mod.weight.dtype} weights)")
                continue
            macs, moved = linear(mod, rows if t is not None else batch, mod.weight.element_size())
            ops.append(Op(name, macs, moved, dtype))
        elif isinstance(mod, nn.Embedding):  # gathers one row per token: bytes read and written
            ops.append(Op(name, 0, 2 * batch * tokens * mod.embedding_dim * mod.weight.element_size(), "memory"))
        elif isinstance(mod, nn.LayerNorm):
            size = mod.weight.element_size() if mod.weight is not None else 4
            ops.append(Op(name, 0, 2 * rows * mod.normalized_shape[-1] * size, "memory"))
        elif any(True for _ in mod.parameters(recurse=False)):  # weights the walker cannot count: no guess
            unknown.append(f"{name} ({type(mod).__name__})")
    for block, t in zip(blocks, per_block):
        q = block.get("q")
        act = q.weight.element_size() if isinstance(q, nn.Linear) else 4
        ops.append(attention_op(f"{block.prefix}.attention products", batch, t, block.n_heads, block.head_size, act))
    return Cost(ops, unknown)


def declared(mod: nn.Module, batch: int, tokens: int, name: str = "") -> list[Op]:
    """A module's own `roofline_cost(batch, tokens)`, as Ops named after it."""
    out = []
    for op in mod.roofline_cost(batch, tokens):
        if not isinstance(op, Op):
            label, macs, moved, dtype = op
            op = Op(f"{name} ({label})" if name else label, macs, moved, parts.DTYPE_NAMES.get(dtype, str(dtype)))
        out.append(op)
    return out


def op_time(op: Op, roof: Roof) -> tuple[float, bool] | None:
    """(seconds the roof allows the op at best, True when memory-bound), or None without a peak for its dtype."""
    memory = op.bytes / roof.bandwidth
    if op.macs == 0:
        return memory, True
    peak = roof.peak("fp32" if op.dtype == "attention" else op.dtype)
    if peak is None:
        return None
    compute = op.macs / peak
    return max(compute, memory), memory >= compute


def time_bound(c: Cost, roof: Roof) -> dict:
    """The forward's lower bound in seconds, split into memory-bound and compute-bound time; `reason` where None."""
    if c.unknown:
        return {"seconds": None, "reason": f"no cost for {', '.join(c.unknown[:3])}"}
    split = {"compute_s": 0.0, "memory_s": 0.0}
    for op in c.ops:
        t = op_time(op, roof)
        if t is None:
            return {"seconds": None, "reason": f"no {op.dtype} peak measured on this machine ({op.name})"}
        split["memory_s" if t[1] else "compute_s"] += t[0]
    return {"seconds": split["compute_s"] + split["memory_s"], **split, "reason": ""}


def predicted_speedup(model: nn.Module, baseline: nn.Module, roof: Roof, batch: int = 32, tokens: int = 64
                      ) -> tuple[float | None, str]:
    """(baseline's time bound / model's, '') at `batch` x `tokens`, or (None, reason) where a cost is unknown."""
    try:
        mine, base = time_bound(cost(model, batch, tokens), roof), time_bound(cost(baseline, batch, tokens), roof)
    except ValueError as err:  # not a classifier the kit knows the blocks of
        return None, str(err)
    if mine["seconds"] is None or base["seconds"] is None:
        return None, mine["reason"] or base["reason"]
    return base["seconds"] / mine["seconds"], ""


class Declared:
    """A model's cost kept apart from it: the ops `cost` would give the source model with its Linears in `weights`
    ('int8', 'bf16' or 'fp32'), for a runtime's wrapper to declare for the graph it compiled. `dynamic`: int8
    activations quantized on every batch (ONNX Runtime's dynamic int8), else kept int8 between layers (static)."""

    def __init__(self, model: nn.Module, weights: str = "int8", dynamic: bool = False):
        self.weights, self.dynamic = weights, dynamic
        blocks = parts.blocks(model)
        self.linears = [(n, m.in_features, m.out_features, any(n.startswith(b.prefix + ".") for b in blocks))
                        for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        self.heads = [(b.prefix, b.n_heads, b.head_size) for b in blocks]
        self.embedding = [(n, m.embedding_dim) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]

    def __call__(self, batch: int, tokens: int) -> list[Op]:
        size = {"int8": 1, "bf16": 2}.get(self.weights, 4)
        act = 4 if self.dynamic else size
        ops = []
        for name, fin, fout, in_block in self.linears:
            rows = batch * tokens if in_block else batch
            moved = fin * fout * size + 4 * fout + rows * (fin + fout) * act
            if self.dynamic:
                moved += rows * fin * (4 + 1)  # the activations read again and written as int8, every batch
            ops.append(Op(name, rows * fin * fout, moved, self.weights))
        ops += [Op(n, 0, 2 * batch * tokens * d * 4, "memory") for n, d in self.embedding]
        ops += [attention_op(f"{p}.attention products", batch, tokens, h, s, 4) for p, h, s in self.heads]
        return ops


def declare(wrapper: nn.Module, model: nn.Module, weights: str, dynamic: bool = False) -> nn.Module:
    """`wrapper` declaring `model`'s cost in `weights` (a runtime's compiled graph); left undeclared (its prediction
    None, with the reason) where the kit does not know the model's blocks."""
    try:
        wrapper.roofline_cost = Declared(model, weights, dynamic)
    except ValueError:
        pass
    return wrapper
