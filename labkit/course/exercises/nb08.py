"""Notebook 08 (small language model): the bytes of a packed 4-bit layer, group-wise RTN, and one GPTQ column step."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given
from labkit.lm.weightonly import group_params, hessian_factor, rtn

# --- 08.packed_bytes: what a 4-bit, group-32 layer stores --------------------------------------------------------

SHAPE = (576, 576)  # SmolLM2-135M's q_proj: [out, in]


def _packed_bytes() -> int:
    out_f, in_f = SHAPE
    groups = out_f * in_f // 32
    return out_f * in_f * 4 // 8 + groups * (2 + 2)  # 4-bit codes, then a float16 scale and offset per group


@exercise("08.packed_bytes",
          f"How many bytes does a {SHAPE[0]} x {SHAPE[1]} Linear weight take at 4 bits per weight, in groups of 32 "
          "inputs, with a float16 scale and a float16 offset per group (no bias)?",
          _packed_bytes,
          {"codes_only": "that is the codes alone. Every group of 32 weights also stores its scale and its offset, "
                         "2 bytes each (float16): add 4 bytes per group.",
           "byte_per_code": "a 4-bit code takes half a byte: two codes are packed into each byte.",
           "fp32_params": "the scale and offset are stored as float16 (2 bytes each), not float32.",
           "fp32": "that is the float32 weight (4 bytes per weight), the size before quantization.",
           "wrong": "weights x 4 bits / 8, plus (weights / 32 groups) x (2 + 2) bytes."})
def _check_packed_bytes(answer: Any) -> str | None:
    answer = float(given(answer))
    n = SHAPE[0] * SHAPE[1]
    if close(answer, _packed_bytes()):
        return None
    if close(answer, n / 2):
        return "codes_only"
    if close(answer, n + n / 32 * 4) or close(answer, n):
        return "byte_per_code"
    if close(answer, n / 2 + n / 32 * 8):
        return "fp32_params"
    if close(answer, 4 * n):
        return "fp32"
    return "wrong"


# --- 08.group_rtn: round-to-nearest, per group of inputs ----------------------------------------------------------

def _group_rtn_solution():
    def rtn_groups(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
        groups = w.reshape(w.shape[0], -1, group_size)  # [out, groups, group_size]: a row's inputs in groups
        lo = groups.amin(dim=-1, keepdim=True)
        scale = (groups.amax(dim=-1, keepdim=True) - lo) / (2 ** bits - 1)
        codes = torch.clamp(torch.round((groups - lo) / scale), 0, 2 ** bits - 1)
        return (lo + codes * scale).reshape(w.shape)
    return rtn_groups


def _rtn_ref(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    return rtn(w, bits, group, half=False)


def _rtn_on_grid(w: torch.Tensor, bits: int, group: int, steps: int, rounding=torch.round,
                 codes_only: bool = False) -> torch.Tensor:
    """A min-max grid with `steps` steps per group, rounded with `rounding`: the shape of several mistakes."""
    g = w.reshape(w.shape[0], -1, group)
    lo = g.amin(dim=-1, keepdim=True)
    scale = (g.amax(dim=-1, keepdim=True) - lo) / steps
    codes = torch.clamp(rounding((g - lo) / scale), 0, 2 ** bits - 1)
    return (codes if codes_only else lo + codes * scale).reshape(w.shape)


def _symmetric(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    g = w.reshape(w.shape[0], -1, group)
    scale = g.abs().amax(dim=-1, keepdim=True) / (2 ** (bits - 1) - 1)
    return (torch.clamp(torch.round(g / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale).reshape(w.shape)


def _golden_rtn() -> list[tuple[torch.Tensor, int, int]]:
    """Weights whose groups differ: a row with one large outlier, rows offset from 0, and rows of many scales."""
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(16, 64, generator=gen) * torch.tensor([0.02, 0.05, 0.1, 0.5, 1.0, 3.0] * 3)[:16, None]
    w[1] += 0.3  # a row that never crosses 0: an asymmetric grid fits it better than a symmetric one
    w[2, 5] = 2.0  # one outlier spoils the grid of its own group only
    wide = torch.randn(8, 96, generator=gen) * torch.logspace(-2, 0, 96)  # inputs of many magnitudes
    return [(w, 3, 16), (w, 4, 32), (wide, 2, 32), (wide, 8, 48)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=0, atol=1e-5)


@exercise("08.group_rtn",
          "Write rtn_groups(w, bits, group_size): every row of w [out, in] cut into groups of group_size "
          "consecutive inputs, each group rounded to its own grid of 2^bits levels from its minimum to its maximum "
          "(offset = min, scale = (max - min) / (2^bits - 1), codes = round((w - offset) / scale) clamped to "
          "0..2^bits - 1); return offset + codes * scale, shaped like w, with w unchanged.",
          _group_rtn_solution,
          {"per_row": "your grid spans a whole row: reshape each row into groups first, "
                      "w.reshape(out, in // group_size, group_size), and take min and max over the last dimension.",
           "wrong_axis": "your groups run down the columns (the outputs): a group is group_size consecutive *inputs* "
                         "of one row, w.reshape(w.shape[0], -1, group_size).",
           "symmetric": "that is a symmetric grid around 0 (scale = max|w| / (2^(bits-1) - 1)): this format stores "
                        "an offset, the group's minimum, so the 2^bits levels span exactly [min, max].",
           "steps": "2^bits levels are 2^bits - 1 steps: scale = (max - min) / (2^bits - 1), so that code 2^bits - 1 "
                    "lands on the maximum.",
           "floor": "you truncated (floor or int()) instead of rounding to the nearest level: use torch.round.",
           "codes": "you returned the integer codes: map them back to weights, offset + codes * scale.",
           "wrong": "groups = w.reshape(out, -1, group_size); lo, hi = min and max over the last dim (keepdim=True); "
                    "scale = (hi - lo) / (2^bits - 1); codes = clamp(round((groups - lo) / scale), 0, 2^bits - 1); "
                    "(lo + codes * scale).reshape(w.shape)."},
          kind="code",
          uses="every decoder Linear weight of SmolLM2 read through your function (torch.nn.utils.parametrize) at 4 "
               "and 3 bits, groups of 32: the model's perplexity and replies with your weights; then inside AWQ's "
               "scale search")
def _check_group_rtn(answer: Any) -> str | None:
    for w, bits, group in _golden_rtn():
        got = attempt(answer, w, bits, group)
        if not isinstance(got, torch.Tensor):
            raise Mistake("wrong_type", "return a tensor")
        if got.shape != w.shape:
            return "wrong_axis" if got.numel() == w.numel() else "wrong"
        if _same(got, _rtn_ref(w, bits, group)):
            continue
        steps = 2 ** bits - 1
        candidates = (("per_row", lambda: _rtn_on_grid(w, bits, w.shape[1], steps)),
                      ("wrong_axis", lambda: _rtn_on_grid(w.T.contiguous(), bits, group, steps).T
                       if w.shape[0] % group == 0 else None),
                      ("symmetric", lambda: _symmetric(w, bits, group)),
                      ("steps", lambda: _rtn_on_grid(w, bits, group, 2 ** bits)),
                      ("floor", lambda: _rtn_on_grid(w, bits, group, steps, torch.floor)),
                      ("codes", lambda: _rtn_on_grid(w, bits, group, steps, codes_only=True)))
        for mistake, make in candidates:
            ref = make()
            if ref is not None and _same(got, ref):
                return mistake
        return "wrong"
    return None


# --- 08.gptq_column: one column of GPTQ ----------------------------------------------------------------------------

def _gptq_column_solution():
    def gptq_column(column, rest, u_row, scale, offset, bits):
        q = offset + torch.clamp(torch.round((column - offset) / scale), 0, 2 ** bits - 1) * scale
        err = (column - q) / u_row[0]  # the rounding error, divided by U[i, i]
        return q, rest - err[:, None] * u_row[None, 1:]  # column j moves by -err * U[i, j]
    return gptq_column


def _golden_gptq() -> tuple:
    """One step of a real factor: a group's grid, a column partly beyond it (earlier steps moved it), 5 columns after."""
    gen = torch.Generator().manual_seed(18)
    x = torch.randn(64, 8, generator=gen) @ (torch.eye(8) + 0.4 * torch.randn(8, 8, generator=gen))  # correlated
    U = hessian_factor(x.T @ x / len(x))
    w = torch.randn(6, 8, generator=gen) * 0.1
    scale, offset = group_params(w[:, 2:8], 3, 6, half=False)
    column = w[:, 2].clone()
    column[0] = offset[0, 0] - 0.3  # below the grid: the clamp keeps code 0
    column[1] = offset[1, 0] + 9 * scale[1, 0]  # above it: the clamp keeps code 7
    return column, w[:, 3:8].clone(), U[2, 2:8].clone(), scale[:, 0].clone(), offset[:, 0].clone(), 3


def _step(column, rest, u_row, scale, offset, bits, clamp=True, divide=True, sign=1.0, u_slice=slice(1, None)):
    codes = torch.round((column - offset) / scale)
    q = offset + (torch.clamp(codes, 0, 2 ** bits - 1) if clamp else codes) * scale
    err = (column - q) / (u_row[0] if divide else 1.0)
    return q, rest - sign * err[:, None] * u_row[None, u_slice]


@exercise("08.gptq_column",
          "Write gptq_column(column, rest, u_row, scale, offset, bits): round `column` [out] to its group's grid "
          "(offset + clamp(round((column - offset) / scale), 0, 2^bits - 1) * scale), then correct the group's "
          "later columns `rest` [out, k] for the rounding error: err = (column - q) / u_row[0], and column j of rest "
          "moves by -err * u_row[1 + j]. Return (q, corrected rest), leaving the inputs unchanged.",
          _gptq_column_solution,
          {"no_correction": "you returned `rest` unchanged: that is plain round-to-nearest. GPTQ's point is the "
                            "correction: subtract err[:, None] * u_row[None, 1:] from rest.",
           "no_divide": "divide the error by u_row[0] (U[i, i]) before spreading it: U is the Cholesky factor of "
                        "H^-1, and GPTQ's update is -(w_i - q_i) / U[i, i] * U[i, j].",
           "sign": "the correction goes the other way: rest - err * u (err = column - q), so the later columns "
                   "make up for what rounding took away.",
           "diagonal": "u_row[0] is U[i, i], column i's own entry; the later columns' weights are u_row[1:].",
           "no_clamp": "a column moved by earlier steps can leave its group's grid: clamp the codes to "
                       "0..2^bits - 1 before mapping back.",
           "wrong": "q = offset + clamp(round((column - offset) / scale), 0, 2**bits - 1) * scale; err = (column - q) "
                    "/ u_row[0]; return q, rest - err[:, None] * u_row[None, 1:]."},
          kind="code",
          uses="GPTQ over every column of one real SmolLM2 layer, with your step in the notebook's loop "
               "(gptq_columns), scored by the layer's output error against RTN's")
def _check_gptq_column(answer: Any) -> str | None:
    args = _golden_gptq()
    got = attempt(answer, *args)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        raise Mistake("wrong_type", "return a tuple (q, corrected rest) of two tensors")
    q, rest = got
    want_q, want_rest = _step(*args)
    if q.shape != want_q.shape or rest.shape != want_rest.shape:
        return "wrong"
    if _same(q, want_q) and _same(rest, want_rest):
        return None
    if _same(rest, args[1]):
        return "no_correction"
    if not _same(q, want_q):
        return "no_clamp" if _same(q, _step(*args, clamp=False)[0]) else "wrong"
    for mistake, kw in (("no_divide", {"divide": False}), ("sign", {"sign": -1.0}),
                        ("diagonal", {"u_slice": slice(0, -1)})):
        if _same(rest, _step(*args, **kw)[1]):
            return mistake
    return "wrong"

