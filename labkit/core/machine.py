"""What this machine is: the CPU's name and the number formats it computes in hardware (VNNI, bf16, fp16, AMX).

Every timing in the kit prints it, because int8 and bf16 speed-ups depend on these features.
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache

import torch

CPUINFO = "/proc/cpuinfo"


def cpuinfo(field: str) -> str | None:
    """The first value of a /proc/cpuinfo field ("model name", "flags"), or None where there is no such file."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name, as the OS reports it."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_features() -> str:
    """The vector instructions torch uses here, and which of int8 dot products (VNNI), bf16, fp16 and AMX run natively."""
    support = native_float_support()
    if support["vnni"] is None:  # not Linux, or no flags line: say nothing we have not read
        return support["capability"]
    # Without VNNI an int8 multiply-add takes three instructions (widen, multiply, add) instead of one; without
    # native bf16, torch converts bf16 to fp32 around each operation.
    said = [f"{'with' if support['vnni'] else 'no'} VNNI", f"{'native' if support['bf16'] else 'no native'} bf16",
            f"{'native' if support['fp16'] else 'no native'} fp16"] + (["AMX"] if support["amx"] else [])
    return f"{support['capability']}, " + ", ".join(said)


# CPU flags that mean arithmetic in a format runs in hardware. x86 names come from Linux's "flags" line, ARM's
# from its "Features" line. F16C (x86) only converts fp16 to fp32 and back, so it does not count as native fp16.
NATIVE_FLAGS = {
    "bf16": ("avx512_bf16", "amx_bf16", "bf16"),  # bf16: ARMv8.6 BFloat16 instructions
    "fp16": ("avx512_fp16", "amx_fp16", "fphp", "asimdhp"),  # fphp/asimdhp: ARM scalar and vector fp16
    "vnni": ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"),  # int8 dot products (ARM: dotprod, i8mm)
    "amx": ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16"),  # Intel's matrix tiles
}


# macOS has no /proc/cpuinfo: Apple silicon answers through sysctl, 1 for each ARM feature it has. Each is read
# under the name Linux gives the same feature, so one table (NATIVE_FLAGS) decides for both.
SYSCTL_FEATURES = {"hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_FP16": "fphp",
                   "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm"}


def sysctl_features() -> set[str] | None:
    """The ARM features macOS reports present (Linux names: "bf16", "fphp", ...); None off macOS or unreadable."""
    if platform.system() != "Darwin":
        return None
    try:  # a name this macOS does not know is an error on stderr; the others are still printed
        out = subprocess.run(["sysctl", *SYSCTL_FEATURES], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    values = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    if not values:
        return None
    return {flag for name, flag in SYSCTL_FEATURES.items() if values.get(name, "").strip() == "1"}


def native_float_support() -> dict:
    """Which number formats this CPU computes in hardware (bf16, fp16, int8 dot products, AMX), from its flags.

    Without native bf16 torch still runs bf16, converting to fp32 around each operation: it may then be slower
    than fp32. The flags are Linux's /proc/cpuinfo (x86 "flags", ARM "Features") or, on macOS, sysctl's ARM
    features. Each answer is None where neither can be read; `found` lists the flags seen."""
    line = cpuinfo("flags") or cpuinfo("Features")
    flags = set(line.split()) if line is not None else sysctl_features()
    out: dict = {"capability": torch.backends.cpu.get_cpu_capability()}
    for kind, names in NATIVE_FLAGS.items():
        out[kind] = None if flags is None else any(n in flags for n in names)
    out["found"] = [] if flags is None else sorted({n for names in NATIVE_FLAGS.values() for n in names} & flags)
    return out


def describe() -> str:
    """This machine in one line, as every timing prints it: the CPU, its features and torch's thread count."""
    return f"{cpu_name()} ({cpu_features()}), {torch.get_num_threads()} threads"
