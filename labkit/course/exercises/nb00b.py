"""Notebook 00b (float formats): fp16's largest value, and rounding fp32 to bf16 by hand on the bit pattern."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given


def _fp16_max() -> float:
    return float(torch.finfo(torch.float16).max)  # (2 - 2^-10) x 2^15 = 65504


@exercise("00b.fp16_max",
          "What is the largest finite fp16 value? (5 exponent bits, bias 15, 10 mantissa bits)",
          _fp16_max,
          {"power_of_two": "2^16 = 65536 does not fit: the top exponent code (11111) is kept for inf and NaN, so "
                           "the largest exponent is 11110 - 15 = 15, the largest mantissa 1.1111111111b = 2 - 2^-10.",
           "integer_range": "that is the range of a 16-bit integer; a float spends its bits on an exponent instead: "
                            "the largest value is (2 - 2^-mantissa bits) x 2^(largest exponent).",
           "bf16": "that is bf16's range (8 exponent bits, like fp32); fp16 has only 5 exponent bits.",
           "wrong": "largest exponent code 11110 (11111 means inf/NaN): 2^(30 - 15); largest mantissa 2 - 2^-10; "
                    "multiply them."})
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
          "Write to_bf16(x): a float32 tensor rounded to bf16 by hand (returned as float32), round to nearest, ties "
          "to even, on the bit pattern: view as int32, add 0x7FFF plus the lowest kept bit (bit 16), clear the low "
          "16 bits, view back as float32. It must equal x.to(torch.bfloat16).float() and leave x unchanged.",
          _to_bf16_solution,
          {"truncated": "you cleared the low 16 bits without rounding first: that rounds toward zero (truncation). "
                        "Add 0x7FFF + lsb before the mask, so anything past the halfway point carries into the "
                        "bits bf16 keeps.",
           "ties_away": "exact ties (low 16 bits 0x8000) went up every time: adding 0x8000 rounds half away from "
                        "zero. Add 0x7FFF plus the lowest kept bit (bits >> 16) & 1, so a tie only goes up when "
                        "that bit is 1, which leaves it even.",
           "ties_down": "exact ties stayed down every time: you added 0x7FFF without the lowest kept bit. Add "
                        "(bits >> 16) & 1 too, so a tie whose kept bit is 1 rounds up to the even neighbour.",
           "as_int": "you returned the integer bit pattern: view it back as float32 (`.view(torch.float32)`).",
           "dtype": "return a float32 tensor holding the bf16 value (`rounded.view(torch.float32)`), not a "
                    "bfloat16 or float64 one.",
           "wrong": "bits = x.view(torch.int32); lsb = (bits >> 16) & 1; ((bits + 0x7FFF + lsb) & -65536) viewed "
                    "as float32 (-65536 is 0xFFFF0000 as an int32)."},
          kind="code",
          uses="every weight of the real classifier, rounded with your function and compared with torch's bf16 "
               "cast; then the classifier with those weights, computing in fp32")
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
