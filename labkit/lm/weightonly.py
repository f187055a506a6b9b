"""Weight-only, per-group quantization of one weight: round-to-nearest, GPTQ-style and AWQ-style (notebook 08).

Each method rounds a weight to a `bits`-bit grid per group of `group_size` consecutive inputs of a row:
w ~ offset + scale * q, q in 0..2^bits - 1, with the group's minimum as its offset (labkit.quant.affine's float
zero-point domain). That is GGUF Q4_1's grid (the format SmolLM2's file comes in), with scale and offset stored as
float16, and the one torch's CPU int4 kernel computes with. The methods return float weights on the grid (fake
quantization: the numbers a packed model computes with).

- `rtn`: round every group to its min-max grid, independently.
- `gptq`: quantize the columns one at a time; each column's rounding error is spread over the columns not yet
  quantized through the inverse Hessian H^-1 (H = X^T X of calibration inputs), so the layer's *output* on those
  inputs moves as little as possible (Frantar et al., 2022, GPTQ, Algorithm 1).
- `awq`: scale input channel j by s_j = mean|x_j|^alpha before rounding and divide it back after, so channels
  that see large activations get a finer grid; alpha in [0, 1] is searched to minimise the output error on
  calibration activations (Lin et al., 2023, AWQ, per layer). alpha = 0 is plain RTN, so it never does worse there.

`hessian_factor`, `gptq_columns` and `output_error` are notebook 08's own code, saved here; `gptq_column` and
`awq_scales` are what its exercises check a learner's step and search against.
"""

from __future__ import annotations

import torch

from labkit.core import settings
from labkit.core.parts import check_weight
from labkit.quant.affine import choose_qparams_affine, dequantize_affine, quantize_affine

BITS = tuple(range(2, 9))
# 2^-24, the smallest float16 above 0, keeps a constant group's scale from rounding to 0 in float16
SCALE_EPS = 2 ** -24


# --- checks ---------------------------------------------------------------------------------------------------------

def check_bits(bits) -> int:
    """`bits` as an int, after checking it is one of 2..8; a ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be an integer from 2 to 8 for weight-only quantization, got {bits!r}.")
    return bits


def check_group(in_features: int, group_size, name: str = "this layer") -> int:
    """`group_size`, after checking it is a positive integer that divides `in_features`; a ValueError otherwise."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
    if in_features % group_size:
        divisors = [d for d in (16, 32, 64, 128, 256) if in_features % d == 0]
        raise ValueError(f"group_size {group_size} does not divide the {in_features} inputs of {name}; use a "
                         f"divisor of {in_features} such as {divisors or [in_features]}.")
    return group_size


def check_damp(damp) -> float:
    """GPTQ's `damp` (the share of the mean curvature added to H's diagonal), after checking it is in [0, 1)."""
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < 1:
        raise ValueError(f"damp must be a number in [0, 1) (0.01 is GPTQ's default), got {damp!r}.")
    return float(damp)


def check_calibration(weight: torch.Tensor, absmean: torch.Tensor, x: torch.Tensor) -> None:
    """A ValueError unless AWQ's `absmean` [in] and inputs `x` [n, in] fit `weight` [out, in] and are finite."""
    n_in = weight.shape[1]
    for name, t, shape in (("act_absmean", absmean, (n_in,)), ("x", x, (None, n_in))):
        check_weight(t, name, fix="Record them with calibration_stats on a model whose weights are finite")
        if t.dim() != len(shape) or t.shape[-1] != n_in:
            want = "[in]" if len(shape) == 1 else "[n, in]"
            raise ValueError(f"{name} must be {want} with in = {n_in} (this weight's inputs), got shape "
                             f"{tuple(t.shape)}: record it on the inputs of this very layer (calibration_stats).")


# --- the grid: scale and offset per group, through labkit.quant.affine ---------------------------------------------

def group_params(w: torch.Tensor, bits: int, group_size: int, half: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and offset of each group of `w` [out, in]: two [out, in // group_size] tensors.

    The group's min-max range cut into 2^bits - 1 steps: offset = min, scale = (max - min) / (2^bits - 1), both
    rounded to float16 as the packed formats store them (`half=False` keeps them float32, as notebook 08's
    exercise does).
    """
    settings.flags(half=half)
    return choose_qparams_affine(w, "asymmetric", (1, group_size), 0, 2 ** bits - 1, eps=SCALE_EPS,
                                 scale_dtype=torch.float16 if half else None, zero_point_domain="float")


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int,
                   group_size: int) -> torch.Tensor:
    """Integer codes in [0, 2^bits - 1] (uint8): clamp(round((w - offset) / scale)), per group."""
    return quantize_affine(w, (1, group_size), scale, offset, 0, 2 ** bits - 1, zero_point_domain="float")


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int) -> torch.Tensor:
    """Floats back from codes: codes * scale + offset, per group."""
    return dequantize_affine(codes, (1, group_size), scale, offset, zero_point_domain="float")


def rtn_codes(weight: torch.Tensor, bits: int, group_size: int,
              half: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, offset) of round-to-nearest: `rtn` returns dequantize of these."""
    check_weight(weight, dim=2)
    settings.flags(half=half)
    bits = check_bits(bits)
    check_group(weight.shape[1], group_size)
    scale, offset = group_params(weight, bits, group_size, half)
    return quantize_codes(weight, scale, offset, bits, group_size), scale, offset


def rtn(weight: torch.Tensor, bits: int, group_size: int, half: bool = True) -> torch.Tensor:
    """Round-to-nearest: every group of `group_size` inputs on its own min-max grid of 2^bits levels.

    `half`: scale and offset stored as float16 (the packed formats), or kept float32 (`half=False`)."""
    settings.flags(half=half)
    return dequantize(*rtn_codes(weight, bits, group_size, half), group_size).to(weight.dtype)


# --- GPTQ ----------------------------------------------------------------------------------------------------------

def hessian_factor(H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1: row i says how column i's error is spread."""
    H = H.double().clone()
    dead = torch.diag(H) == 0  # inputs never seen in calibration: give them a unit curvature
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(inverse, upper=True).float()


def gptq_column(column: torch.Tensor, rest: torch.Tensor, u_row: torch.Tensor, scale: torch.Tensor,
                offset: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ step: the column rounded to its group's grid, and the rest of the group corrected for its error.

    `column` [out] is column i of the weights as updated so far, `rest` [out, k] the k columns after it in its
    group, `u_row` = U[i, i:i + k + 1] (U: hessian_factor). The error divided by U[i, i] moves column j by
    -error * U[i, j] (GPTQ, eq. 3: the change of the not-yet-quantized weights that keeps the layer's output on
    the calibration inputs closest). Returns (quantized column, corrected rest); the inputs are left unchanged.
    """
    codes = quantize_affine(column[:, None], (1, 1), scale, offset, 0, 2 ** bits - 1, "float")
    q = dequantize_affine(codes, (1, 1), scale, offset, "float")[:, 0]
    err = (column - q) / u_row[0]
    return q, rest - err[:, None] * u_row[None, 1:]


def gptq_columns(weight: torch.Tensor, U: torch.Tensor, bits: int, group_size: int,
                 step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ's loop: round the columns one by one with `step`, each column's error spread over the later columns.

    Returns the rounded weight, and the scale and offset [out, in // group_size] each group was rounded on."""
    W = weight.detach().float().clone()
    U = U.to(W.device)  # calibration statistics live on the CPU; the weights may be on a GPU
    Q = torch.zeros_like(W)
    scales, offsets = [], []
    for start in range(0, W.shape[1], group_size):
        end = start + group_size
        scale, offset = group_params(W[:, start:end], bits, group_size)  # the grid of W as corrected so far
        errors = torch.zeros(W.shape[0], group_size, device=W.device)
        for i in range(start, end):
            Q[:, i], W[:, i + 1:end] = step(W[:, i], W[:, i + 1:end], U[i, i:end], scale[:, 0], offset[:, 0], bits)
            errors[:, i - start] = (W[:, i] - Q[:, i]) / U[i, i]
        # The later groups get the whole group's corrections in one matrix product: the same sums as one column
        # at a time, with far less memory traffic (GPTQ's "lazy batch" updates).
        W[:, end:] -= errors @ U[start:end, end:]
        scales.append(scale)
        offsets.append(offset)
    return Q, torch.cat(scales, dim=1), torch.cat(offsets, dim=1)


def gptq_factor(H: torch.Tensor, damp: float = 0.01,
                act_order: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the column order, hessian_factor of H in that order): act_order's decreasing curvature diag(H), or None for
    the weight's own order. Inputs never seen get a unit curvature before the sort, as in fasterquant."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        H = H[perm][:, perm]
    return perm, hessian_factor(H.cpu(), damp)


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float = 0.01,
                  act_order: bool = False, static_groups: bool = False, blocksize: int | None = None,
                  factor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """GPTQ as IST-DASLab/gptq's `fasterquant` runs it: (the rounded weight, and the scale and offset [out, groups]
    of each group, in the weight's own column order).

    `act_order`: the columns are quantized in order of decreasing curvature diag(H) (the inputs that matter most
    first, while the most later columns remain to absorb their error). `static_groups`: every group's grid is
    chosen from the original weights before the loop, so with `act_order` the groups stay the weight's own
    consecutive columns. With `act_order` alone, a group is `group_size` consecutive columns *of the new order*:
    no contiguous scale and offset describe it, and (None, None) is returned for them (a packed format would need
    a group index per column). `blocksize`: the lazy-batch width (fasterquant's 128); by default the group size,
    where a non-static group's grid is chosen from fully updated weights. A grid chosen inside a wider block reads
    the weights without the corrections made earlier in that block, as fasterquant does. `factor`: what
    gptq_factor(H, damp, act_order) returns, when layers reading one input share it.
    """
    check_weight(weight, dim=2)
    bits = check_bits(bits)
    check_group(weight.shape[1], group_size)
    check_damp(damp)
    n = weight.shape[1]
    blocksize = group_size if blocksize is None else blocksize
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer (fasterquant uses 128), got {blocksize!r}.")
    W = weight.detach().float().clone()
    W[:, torch.diag(H).to(W.device) == 0] = 0  # inputs never seen in calibration: their weights cannot matter there
    grids = [group_params(W[:, i:i + group_size], bits, group_size) for i in range(0, n, group_size)] \
        if static_groups else []
    perm, U = gptq_factor(H, damp, act_order) if factor is None else factor
    U = U.to(W.device)
    if perm is not None:
        W = W[:, perm]
    Q = torch.zeros_like(W)
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        W1, errors = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1, device=W.device)
        for i in range(i2 - i1):
            col = i1 + i
            if static_groups:
                scale, offset = grids[int(col if perm is None else perm[col]) // group_size]
            elif col % group_size == 0:
                scale, offset = group_params(W[:, col:col + group_size], bits, group_size)
                grids.append((scale, offset))
            Q[:, col], W1[:, i + 1:] = gptq_column(W1[:, i], W1[:, i + 1:], U[col, col:i2], scale[:, 0],
                                                   offset[:, 0], bits)
            errors[:, i] = (W1[:, i] - Q[:, col]) / U[col, col]
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
        if not static_groups:
            return Q.to(weight.dtype), None, None
    return Q.to(weight.dtype), torch.cat([g[0] for g in grids], 1), torch.cat([g[1] for g in grids], 1)


def gptq(weight: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float = 0.01,
         factor: torch.Tensor | None = None, step=None) -> torch.Tensor:
    """GPTQ-style: quantize column by column, spreading each column's error over the remaining columns.

    H = X^T X / n of the layer's calibration inputs X [n, in]. A group's grid is chosen when its first column
    comes up, from the weights as updated so far. `factor`: hessian_factor(H, damp), when already computed.
    `step`: the one-column update to use (gptq_column's signature; a learner's own, in notebook 08).
    """
    check_weight(weight, dim=2)
    bits = check_bits(bits)
    check_group(weight.shape[1], group_size)
    check_weight(H, "H", fix="Record H with calibration_stats on a model whose weights are finite")
    if H.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"H must be [in, in] = {(weight.shape[1],) * 2} for this weight, got {tuple(H.shape)}.")
    check_damp(damp)
    U = hessian_factor(H, damp) if factor is None else factor
    return gptq_columns(weight, U, bits, group_size, step or gptq_column)[0].to(weight.dtype)


# --- AWQ -----------------------------------------------------------------------------------------------------------

def output_error(weight: torch.Tensor, new_weight: torch.Tensor, x: torch.Tensor) -> float:
    """Mean squared change of the layer's output x @ W^T over the inputs x [n, in] when W becomes new_weight."""
    return float(((x.float().to(weight.device) @ (new_weight.float() - weight.float()).T) ** 2).mean())


def awq_scales(weight: torch.Tensor, absmean: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, rounding,
               grid: int = 20) -> tuple[torch.Tensor, float]:
    """AWQ's search: per-input-channel scales s = mean|x|^alpha for alpha = 0, 1/grid, ..., 1, scored by the output
    error on the inputs x of rounding(W * s) / s. Returns the best scales and their alpha (0: plain rounding)."""
    W = weight.detach().float()
    mean, x = absmean.float().clamp(min=1e-5).to(W.device), x.to(W.device)  # statistics are kept on the CPU
    best = (float("inf"), torch.ones_like(mean), 0.0)
    for k in range(grid + 1):
        alpha = k / grid
        s = mean ** alpha
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1, as AWQ does; the grid is scale-free
        err = output_error(W, rounding(W * s, bits, group_size) / s, x)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def check_grid(grid) -> int:
    """`grid` (AWQ's number of alpha steps), after checking it is a positive integer; a ValueError otherwise."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive integer (the number of alpha steps), got {grid!r}.")
    return grid


def awq(weight: torch.Tensor, act_absmean: torch.Tensor, x: torch.Tensor, bits: int, group_size: int,
        grid: int = 20) -> torch.Tensor:
    """AWQ-style weight: rtn(W * s) / s with the searched per-input-channel scales s (see awq_scales)."""
    check_weight(weight, dim=2)
    bits, grid = check_bits(bits), check_grid(grid)
    check_group(weight.shape[1], group_size)
    check_calibration(weight, act_absmean, x)
    s, _ = awq_scales(weight, act_absmean, x, bits, group_size, rtn, grid)
    return (rtn(weight.float() * s, bits, group_size) / s).to(weight.dtype)
