"""Notebook 08 (small language model): the bytes of a packed 4-bit layer, group-wise RTN, one GPTQ column step, AWQ's
scale search; its predictions and its written question."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given, prediction, written
from labkit.lm.weightonly import SCALE_EPS, awq_scales, group_params, hessian_factor, rtn

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
          {"codes_only": "that is the codes alone. A group's codes mean nothing without the two numbers that map them "
                         "back to weights, and the packed layer stores those too, in float16, once per group.",
           "byte_per_code": "you gave every code a whole byte. A 4-bit code is half a byte, and the format packs them "
                            "tightly.",
           "fp32_params": "the scale and offset are stored as float16, not float32: count their bytes again.",
           "fp32": "that is the float32 weight, the size before quantization.",
           "wrong": "count two parts: the codes (bits per weight, packed into bytes), and for each group of 32 inputs "
                    "the numbers that turn its codes back into weights."},
          ladder=("A packed layer stores every weight's code, and for each group the numbers that turn its codes back "
                  "into weights (here a scale and an offset).",
                  "Codes are counted in bits and packed, so divide by 8 only after multiplying by the bits. Groups "
                  "are per row: a row of 576 inputs holds 576 / 32 of them, and there are 576 rows.",
                  "A 4 x 64 layer at 2 bits in groups of 16, float16 scale and offset: 256 codes x 2 bits = 64 "
                  "bytes; 4 rows x 4 groups = 16 groups x 4 bytes = 64 bytes; 128 bytes in all."))
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
        scale = scale.clamp(min=SCALE_EPS)  # a constant group has no range: any step > 0 keeps it where it is
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


def _constant_rtn() -> tuple[torch.Tensor, int, int]:
    """Groups with no range (max = min): a row of zeros, a group of one repeated value, beside ordinary groups."""
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(88)) * 0.1
    w[1] = 0.0  # a pruned row
    w[2, 16:] = 0.25  # one constant group of 16
    return w, 4, 16


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=0, atol=1e-5)


@exercise("08.group_rtn",
          "Write rtn_groups(w, bits, group_size): w [out, in] float32, group_size dividing in. Return a float32 "
          "tensor shaped like w in which every group of group_size consecutive inputs of a row is replaced by the "
          "nearest levels of that group's own min-max grid of 2^bits levels (scale and offset kept in float32), "
          "leaving w unchanged. Checked against labkit's RTN on weights with outliers, offsets, many scales and "
          "groups whose weights are all equal.",
          _group_rtn_solution,
          {"per_row": "your grid spans a whole row. Each group of group_size inputs has its own minimum and "
                      "maximum, so the groups need a dimension of their own before you reduce over them.",
           "wrong_axis": "your groups run down the columns (the outputs). A group is group_size consecutive *inputs* "
                         "of one row: the last dimension of w, split.",
           "symmetric": "that is a symmetric grid around 0, from -max|w| to +max|w|. This format stores an offset, "
                        "so its 2^bits levels span exactly the group's [min, max], wherever that lies.",
           "steps": "your step is too small, so the top code falls short of the maximum: 2^bits levels leave one "
                    "step fewer between the lowest and the highest.",
           "floor": "you truncated instead of rounding to the nearest level: a weight just below a level ends up "
                    "a whole step lower.",
           "codes": "you returned the integer codes. The layer computes with weights: map each code back to its "
                    "level.",
           "constant": "a group whose weights are all equal has no range, so its step is 0 and 0 / 0 gives NaN. "
                       "Such a group must come back unchanged: give its step any positive value (labkit uses "
                       "2^-24, float16's smallest).",
           "wrong": "try your function on one row of 4 weights with group_size 4 and bits 2, work out its 4 levels "
                    "by hand, and see which weight lands on a different level."},
          kind="code",
          uses="every decoder Linear weight of SmolLM2 read through your function (torch.nn.utils.parametrize) at 4 "
               "and 3 bits, groups of 32: the model's perplexity and replies with your weights; then inside AWQ's "
               "scale search",
          ladder=("Each group of group_size consecutive inputs of a row gets its own evenly spaced grid: 2^bits "
                  "levels, the lowest at the group's minimum and the highest at its maximum. Every weight is "
                  "replaced by the level nearest to it.",
                  "Give the groups a dimension of their own before taking any minimum or maximum, and keep it "
                  "(keepdim) so the per-group numbers broadcast over the group's weights. n levels are n - 1 steps. "
                  "A group whose weights are all equal has no range: its step must still not be 0.",
                  "One group [0.0, 0.1, 0.5, 0.9] at 2 bits: 4 levels from 0.0 to 0.9, a step of 0.3, so the "
                  "levels are 0.0, 0.3, 0.6, 0.9. 0.1 / 0.3 = 0.33 rounds to code 0, 0.5 / 0.3 = 1.67 to code 2: "
                  "the group becomes [0.0, 0.0, 0.6, 0.9]. A group [0.2, 0.2, 0.2, 0.2] stays as it is."))
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
    w, bits, group = _constant_rtn()  # last, so that a mistake of the grid itself is named first
    got = attempt(answer, w, bits, group)
    if not isinstance(got, torch.Tensor) or got.shape != w.shape:
        return "wrong"
    if not torch.isfinite(got).all():
        return "constant"
    return None if _same(got, _rtn_ref(w, bits, group)) else "wrong"


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
          "Write gptq_column(column, rest, u_row, scale, offset, bits), one GPTQ step: column [out] is column i of the "
          "weights as corrected so far, rest [out, k] the later columns of its group, u_row [k + 1] is U[i, i:i + k + "
          "1] (U the upper Cholesky factor of H^-1), scale and offset [out] the group's grid. Return (q, new rest): q "
          "[out] the column on its grid's nearest levels (the codes within 0..2^bits - 1), and rest corrected for "
          "q's rounding error as GPTQ's update says, both float32, leaving the inputs unchanged. Checked on a real "
          "factor U with a column partly off its grid, then in GPTQ's loop on a real layer.",
          _gptq_column_solution,
          {"no_correction": "you returned `rest` unchanged: that is plain round-to-nearest. GPTQ's point is that the "
                            "later columns move to make up for this column's rounding error.",
           "no_divide": "the later columns moved by the right pattern but by the wrong amount: the error is measured "
                        "in units of this column's own entry of U, its diagonal, before it is spread.",
           "sign": "the correction goes the wrong way: it should cancel what rounding took away, and yours adds "
                   "to it. Check which is subtracted from which in your error.",
           "diagonal": "u_row's first entry is column i's own, U[i, i]; the later columns' entries are the ones "
                       "after it. Yours are shifted by one.",
           "no_clamp": "a column moved by earlier steps can leave its group's grid, and a code outside 0..2^bits - 1 "
                       "does not exist in the packed format: clamp the codes before mapping back.",
           "wrong": "try one output row by hand: a column of 0.47 on a grid with offset 0 and scale 0.25, u_row "
                    "[0.5, 0.2, -0.1]. What is q, what is the error, and how far does each later column move?"},
          kind="code",
          uses="GPTQ over every column of one real SmolLM2 layer, with your step in the notebook's loop "
               "(gptq_columns), scored by the layer's output error against RTN's",
          ladder=("Rounding column i changes the layer's output by x_i times the error. Inputs are correlated, so the "
                  "columns not yet rounded can cancel part of it: row i of U (the Cholesky factor of H^-1) says how "
                  "much each later column should move, relative to column i's own entry U[i, i].",
                  "The error is what rounding took away (before minus after), divided by the diagonal entry; each "
                  "later column moves against it, in proportion to its own entry of the row. The diagonal belongs "
                  "to column i, not to the later columns. And clamp the codes: an earlier step may have pushed this "
                  "column off its grid.",
                  "One output row: a column of 0.47, offset 0, scale 0.25, 2 bits: code round(1.88) = 2, q = 0.5. "
                  "The error is 0.47 - 0.5 = -0.03, divided by U[i, i] = 0.5: -0.06. With later entries 0.2 and "
                  "-0.1, the two later columns move by +0.012 and -0.006."))
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



# --- 08.awq_scales: AWQ's search over alpha, scored on the layer's output --------------------------------------------

def _awq_scales_solution():
    def awq_scales(weight, absmean, x, bits, group_size, rounding, grid=20):
        original = weight.detach().float()
        mean = absmean.float().clamp(min=1e-5)  # a channel never active would get a scale of 0
        best_err, best_s, best_alpha = float("inf"), torch.ones_like(mean), 0.0
        for k in range(grid + 1):  # alpha = 0, 1/grid, ..., 1: both ends included
            alpha = k / grid
            s = mean ** alpha
            s = s / (s.max() * s.min()).sqrt()  # centred around 1; the min-max grid scales with the weights
            rounded = rounding(original * s, bits, group_size) / s
            err = float(((x.float() @ (rounded - original).T) ** 2).mean())  # what the layer's output moves
            if err < best_err:
                best_err, best_s, best_alpha = err, s, alpha
        return best_s, best_alpha
    return awq_scales


def _golden_awq() -> list[tuple]:
    """Inputs with three odd channels, as SmolLM2's layers have: loud ones (an inner alpha wins), quiet ones with large
    weights, loud ones with small weights (alpha = 1 wins). Together they tell each named mistake apart from the
    others. Each: (weight, absmean, x, bits, group_size, grid)."""
    cases = []
    for seed, gain, weights, bits, grid in ((808, 8.0, 1.0, 3, 8), (809, 0.2, 5.0, 2, 4), (810, 30.0, 0.05, 3, 4)):
        gen = torch.Generator().manual_seed(seed)
        odd = torch.ones(64)
        odd[[3, 17, 40]] = gain
        calib = torch.randn(512, 64, generator=gen) * odd
        w = torch.randn(12, 64, generator=gen) * 0.05
        w[:, [3, 17, 40]] *= weights
        cases.append((w, calib.abs().mean(0), calib[:96].clone(), bits, 16, grid))
    return cases


def _rtn32(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    return rtn(w, bits, group, half=False)


def _awq_variant(weight, absmean, x, bits, group, grid, sign=1.0, unscale=True, on_weights=False, last=1):
    """AWQ's search with one step changed: the shape of the mistakes the check names."""
    mean, best = absmean.clamp(min=1e-5), (float("inf"), None, 0.0)
    for k in range(grid + last):
        s = mean ** (sign * k / grid)
        rounded = _rtn32(weight * s, bits, group) / (s if unscale else 1.0)
        err = float(((rounded - weight) ** 2).mean()) if on_weights else float(((x @ (rounded - weight).T) ** 2).mean())
        if err < best[0]:
            best = (err, s, k / grid)
    return best[1], best[2]


def _same_search(got: tuple, want: tuple) -> bool:
    """Same alpha, and scales equal up to one positive factor (a min-max grid rounds W * c * s like W * s)."""
    (s, alpha), (s_ref, alpha_ref) = got, want
    if s.shape != s_ref.shape or abs(float(alpha) - float(alpha_ref)) > 1e-6:
        return False
    ratio = s.float() / s_ref.float()
    return bool(torch.isfinite(ratio).all() and ratio.min() > 0 and (ratio.max() / ratio.min() - 1) < 1e-4)


@exercise("08.awq_scales",
          "Write awq_scales(weight, absmean, x, bits, group_size, rounding, grid=20), AWQ's search for one layer: "
          "weight [out, in], absmean [in] each input channel's mean |activation| on calibration text, x [n, in] "
          "calibration inputs, rounding(w, bits, group_size) a group-wise rounding such as your rtn_groups. Try "
          "alpha = 0, 1/grid, ..., 1, with per-input-channel scales that follow absmean to the power alpha, and "
          "return (s, alpha): the scales [in] (float32, positive; AWQ centres them around 1, any positive multiple "
          "rounds the same) and the alpha whose scaled-and-rounded layer changes the layer's output on x the least. "
          "Checked against labkit's search on inputs with a few loud channels, then run on SmolLM2's most uneven "
          "layer.",
          _awq_scales_solution,
          {"inverse": "your scales shrink the channels that see large activations. AWQ gives those channels' "
                      "weights a *finer* grid, relative to their size: their scale should grow with mean |x|.",
           "no_unscale": "you scored the scaled weights themselves. The layer computes with the rounded weights "
                         "divided back by s (in a deployment the division folds into the previous layer), so that "
                         "is what to compare with the original weight.",
           "weight_error": "you scored the change of the weights. AWQ's point is that a weight's error matters in "
                           "proportion to the activations it multiplies: score the change of the layer's *output* "
                           "on x.",
           "no_last": "alpha = 1 was never tried: the grid runs from 0 to 1 with both ends, grid + 1 values. On "
                      "inputs with very loud channels, 1 is the best.",
           "wrong": "try a 2-channel case by hand: mean |x| = [4, 1], grid = 2. Which three scale vectors do you "
                    "try, and which rounded weights do you score against which?"},
          kind="code",
          uses="AWQ's scales for SmolLM2's layer with the most uneven input channels at 3 bits, with your "
               "rtn_groups as the rounding, scored by its output error against RTN's",
          ladder=("Scaling input channel j of the weight up by s_j before rounding, and back down after, gives that "
                  "channel's weights a finer grid relative to their size. The output error weighs each channel by "
                  "its activations, so channels with large mean |x| should get the larger s. One exponent alpha sets "
                  "how strongly s follows mean |x|: 0 is plain rounding, 1 follows it fully. Try each alpha and keep "
                  "the one whose rounded layer's output moves least.",
                  "Score each alpha on the layer's output over x, not on the weights, and score the weights the "
                  "layer would compute with: rounded after scaling, then divided back, compared with the original. "
                  "Include both ends of the grid, and return the scales that go with the best score, not the last "
                  "ones tried.",
                  "Two channels with mean |x| = [4, 1], grid = 2: alpha 0, 0.5 and 1 give s = [1, 1], [2, 1] and "
                  "[4, 1] (centred: [1, 1], [1.41, 0.71], [2, 0.5]). For each, round W * s with the given rounding, "
                  "divide by s, and take the mean squared change of x @ W.T; if alpha 0.5 scores lowest, return "
                  "([1.41, 0.71], 0.5)."))
def _check_awq_scales(answer: Any) -> str | None:
    cases, found = _golden_awq(), []
    for weight, absmean, x, bits, group, grid in cases:
        got = attempt(answer, weight, absmean, x, bits, group, _rtn32, grid)
        if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], torch.Tensor)):
            raise Mistake("wrong_type", "return a tuple (scales, alpha)")
        if not isinstance(got[1], (int, float)) and not (isinstance(got[1], torch.Tensor) and got[1].numel() == 1):
            raise Mistake("wrong_type", "alpha is one number")
        found.append(got)
    if all(_same_search(got, awq_scales(*case[:5], _rtn32, case[5])) for got, case in zip(found, cases)):
        return None
    for mistake, kw in (("inverse", {"sign": -1.0}), ("no_unscale", {"unscale": False}),
                        ("weight_error", {"on_weights": True}), ("no_last", {"last": 0})):
        if all(_same_search(got, _awq_variant(*case, **kw)) for got, case in zip(found, cases)):
            return mistake
    return "wrong"


# --- predictions and the written questions---------------------------------------------------------------------------

prediction("08.rtn3_perplexity", "3-bit, group-32 RTN: its perplexity as a multiple of the decoded model's?", unit="x")
prediction("08.gptq_output_error", "GPTQ's output error on o_proj at 3 bits, as a share of RTN's (1 = no better)?",
           unit="x")
prediction("08.kv_crossover", "At how many tokens of context does the fp32 KV cache outweigh the 4-bit g32 model?",
           unit=" tokens")
written("08.why_gptq", "GPTQ's weights are farther from the original than RTN's, and yet the layer's output is "
        "closer. Why, and what would GPTQ lose with calibration text unlike the text it is used on?", points=3)
written("08.why_w8a8", "Why does torch's one activation scale per call break W8A8 on this model, and why does SmoothQuant "
        "still help once every token has its own scale?", points=2)
