"""Notebook 00b (float formats): fp16's largest value, rounding fp32 to bf16 by hand on the bit pattern, and
predictions about the weights' rounding error and bf16's speed."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given, prediction, written


def _fp16_max() -> float:
    return float(torch.finfo(torch.float16).max)  # (2 - 2^-10) x 2^15 = 65504


@exercise("00b.fp16_max",
          "What is the largest finite fp16 value? (5 exponent bits, bias 15, 10 mantissa bits; a number)",
          _fp16_max,
          {"power_of_two": "a power of two is not the largest value: the top exponent code is kept for inf and NaN, "
                           "so the largest usable exponent is one lower, and a mantissa of all ones stops just short "
                           "of 2.",
           "integer_range": "that is the range of a 16-bit integer; a float spends its bits on an exponent instead, "
                            "so its largest value is far from 2^16 - 1 in how it is made, if not in size.",
           "bf16": "that is bf16's range (8 exponent bits, like fp32); fp16 has only 5 exponent bits.",
           "wrong": "the largest value joins the largest exponent the format may use with the largest mantissa. "
                    "Check which exponent code is the top usable one, and what 1.mantissa is when every mantissa "
                    "bit is 1."},
          ladder=("A float's value is 1.mantissa x 2^(exponent code - bias). Its largest finite value joins the "
                  "largest exponent the format may use with the largest mantissa.",
                  "The all-ones exponent code is not a number: it is kept for infinity and NaN, so the largest "
                  "usable code is the one below it. And a mantissa of all ones is not 2: it is 2 minus the value "
                  "of its last bit.",
                  "A toy 7-bit float: 3 exponent bits (bias 3), 3 mantissa bits. The largest usable exponent code "
                  "is 110 = 6, giving 2^(6 - 3) = 8; the largest mantissa is 1.111b = 2 - 2^-3 = 1.875; the "
                  "largest value is 1.875 x 8 = 15."))
def _check_fp16_max(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, _fp16_max()):
        return None
    if close(answer, 2.0 ** 16) or close(answer, 2.0 ** 15):
        return "power_of_two"
    if answer in (32767.0, 65535.0):
        return "integer_range"
    if close(answer, float(torch.finfo(torch.bfloat16).max), 1e-3):
        return "bf16"
    return "wrong"


# --- 00b.to_bf16: round-to-nearest-even on the bit pattern ----------------------------------------------------

def _to_bf16_solution():
    def to_bf16(x: torch.Tensor) -> torch.Tensor:
        bits = x.view(torch.int32)  # the same 32 bits, read as an integer (no copy: never write into it)
        lsb = (bits >> 16) & 1  # the lowest bit bf16 keeps: ties round to make it 0 (even)
        rounded = (bits + 0x7FFF + lsb) & -65536  # -65536 = 0xFFFF0000: clear the 16 bits bf16 drops
        return rounded.view(torch.float32)
    return to_bf16


def _pattern(*codes: int) -> torch.Tensor:
    """float32 values from their 32-bit patterns (written as unsigned hex)."""
    return torch.tensor([c - (1 << 32) if c >= 1 << 31 else c for c in codes], dtype=torch.int32).view(torch.float32)


# Every kind of value the rounding must get right: ordinary numbers, exact ties (low 16 bits 0x8000) whose kept
# lowest bit is 0 (stay) or 1 (round up), values just beside a tie, subnormals, the top of the range (rounds to
# inf), infinities and signed zeros. NaN is left out: the bit trick needs a special case for it.
GOLDEN = torch.cat([
    torch.tensor([1.0, -2.5, 0.1, -0.1, 3.14159265, 1e-3, 65504.0, 1e30, -1e-30]),
    _pattern(0x3F808000, 0xBF808000,  # ties, kept bit 0: stay at 1.0 / -1.0
             0x3F818000, 0xBF818000,  # ties, kept bit 1: round up to the even neighbour
             0x3F808001, 0x3F807FFF,  # just above and just below a tie
             0x00008000, 0x00018000, 0x00012345, 0x807FFFFF, 0x80018000,  # subnormals (two of them ties)
             0x7F7FFFFF, 0x7F7F7FFF,  # fp32's largest value rounds to inf; a little less stays finite
             0x7F800000, 0xFF800000, 0x00000000, 0x80000000),  # +-inf, +-0
])


def _random_golden() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 64, generator=gen) * torch.logspace(-3, 3, 64)  # weights of many magnitudes, a 2-D tensor


def _masked(x: torch.Tensor, add) -> torch.Tensor:
    bits = x.view(torch.int32)
    return ((bits + add(bits)) & -65536).view(torch.float32)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@exercise("00b.to_bf16",
          "Write to_bf16(x): x is a float32 tensor of any shape. Return a float32 tensor of its shape holding each "
          "value rounded to bf16 (to nearest, ties to even), computed with integer operations on the bit pattern, "
          "not with a cast. Checked bit for bit against x.to(torch.bfloat16).float() on ties, values beside ties, "
          "subnormals, the top of the range, infinities, signed zeros and random weights (NaN left out); x must "
          "stay unchanged.",
          _to_bf16_solution,
          {"truncated": "you cleared the low 16 bits without rounding first: that rounds every value toward zero "
                        "(truncation). To round to nearest, the dropped half has to carry into the kept half when "
                        "it is more than half a step.",
           "ties_away": "exact ties (dropped half exactly 0x8000) went up every time: that is round half away "
                        "from zero. Ties to even go up only when the lowest kept bit is 1, so that it becomes 0.",
           "ties_down": "exact ties stayed down every time, also those whose lowest kept bit is 1: those must go "
                        "up to the even neighbour. What you add before clearing has to depend on that bit.",
           "as_int": "you returned the integer bit pattern: the caller wants float32 numbers, so read the same "
                     "bits back as float32.",
           "dtype": "return a float32 tensor holding the bf16 value, not a bfloat16 or float64 one.",
           "wrong": "compare your result with torch's cast one value at a time, printing both bit patterns in hex: "
                    "does it differ on ties, on values just past half a step, or everywhere (then look at how the "
                    "bits are read and read back)?"},
          kind="code",
          uses="every weight of the real classifier, rounded with your function and compared with torch's bf16 "
               "cast; then the classifier with those weights, computing in fp32",
          ladder=("bf16 keeps the top 16 bits of an fp32 pattern. Rounding to nearest lets the 16 dropped bits "
                  "decide whether the kept part goes up by one: above half a step (0x8000) up, below down, exactly "
                  "half (a tie) to whichever neighbour ends in a 0 bit.",
                  "All of it is integer arithmetic on the pattern: one addition before clearing the low bits "
                  "carries into the kept half exactly when it should. The usual slips: adding exactly half (every "
                  "tie goes up), an amount that ignores the lowest kept bit (every tie stays), and writing into the "
                  "int32 view, which is x's own memory.",
                  "The same on an 8-bit pattern that keeps its top 4 bits: 0101_1000 is a tie whose kept 0101 ends "
                  "in 1, so it goes up to 0110_0000; 0100_1000 is a tie ending in 0, so it stays 0100_0000; "
                  "0100_1001 is past half, so it goes up to 0101_0000. Adding 0111 plus the kept lowest bit, then "
                  "clearing the low 4 bits, gives all three."))
def _check_to_bf16(answer: Any) -> str | None:
    for x in (GOLDEN, _random_golden()):
        got = attempt(answer, x)
        if not isinstance(got, torch.Tensor):
            raise Mistake("wrong_type", "return a tensor")
        if got.dtype in (torch.int32, torch.int64):
            return "as_int"
        if got.dtype != torch.float32:
            return "dtype"
        if got.shape != x.shape:
            return "wrong"
        if _same_bits(got, x.to(torch.bfloat16).float()):
            continue
        for mistake, add in (("truncated", lambda b: 0), ("ties_away", lambda b: 0x8000),
                             ("ties_down", lambda b: 0x7FFF)):
            if _same_bits(got, _masked(x, add)):
                return mistake
        return "wrong"
    return None


prediction("00b.bf16_fp16_error_ratio", "How many times larger will bf16's relative error on the classifier's "
           "weights be than fp16's?", unit="x")
prediction("00b.bf16_speedup_b32", "How many times fp32's speed will the bf16 classifier run at batch 32 on this "
           "machine?", unit="x")
written("00b.batch_and_bytes", "A bf16 copy reads half the bytes of fp32 for every weight. From the speed-ups "
        "measured at batch 1 and batch 32 and this CPU's features, explain why halving the bytes did or did not make "
        "the model faster here, and whether the answer differs between batch 1 and batch 32.", points=2)
