"""Which numeric precision training runs in, from spec.training.precision and the hardware.

On GPUs, `auto` is bf16 where the GPU supports it. On CPUs, `auto` is bf16 autocast only
with AMX (bf16 matrix tiles): on a CPU with avx512_bf16 but no AMX our MiniLM training ran
at 0.68x of fp32 in bf16 autocast (docs/benchmarks.md), so `auto` stays fp32 there, and an
explicit `bf16` is allowed. Without any bf16 instructions bf16 is emulated and slower
still, so an explicit `bf16` is refused at start; fp16 needs a GPU.
"""

from __future__ import annotations

from pathlib import Path

from .errors import PermanentError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags of /proc/cpuinfo's text (x86 `flags`, Arm `Features`)."""
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found |= set(value.split())
    return found


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text, or "" where there is none."""
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.exists() else ""


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    flags = cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)
    return any(f in flags for f in BF16_FLAGS) or "bf16" in flags  # Arm: "bf16"


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    return "amx_bf16" in cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)


def mixed_precision(
    precision: str, cuda: bool, gpu_bf16: bool, cpu_bf16: bool, cpu_amx: bool = False
) -> str:
    """accelerate's mixed_precision ("no", "bf16" or "fp16") for spec.training.precision."""
    if precision == "fp32":
        return "no"
    if cuda:
        if precision == "auto":
            return "bf16" if gpu_bf16 else "no"
        return precision
    if precision == "auto":
        return "bf16" if cpu_amx else "no"
    if precision == "fp16":
        raise PermanentError(
            "spec.training.precision: fp16 needs a GPU and none is visible; use auto, bf16 or fp32"
        )
    if not cpu_bf16:
        raise PermanentError(
            "spec.training.precision: bf16 on this CPU would be emulated (no "
            f"{' or '.join(BF16_FLAGS)} instructions) and slower than fp32; "
            "use auto or fp32, or run on a GPU or a CPU with bf16"
        )
    return "bf16"


def describe(mode: str) -> str:
    return {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(mode, mode)
