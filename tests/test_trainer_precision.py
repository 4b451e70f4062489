"""spec.training.precision against the hardware: the capability probe reads
/proc/cpuinfo's text, so CPUs with and without bf16 are simulated by that text
(this machine has one CPU only)."""

from __future__ import annotations

import pytest

from finetune_trainer.errors import PermanentError
from finetune_trainer.precision import cpu_has_amx, cpu_has_bf16, mixed_precision

WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"
WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_the_probe_reads_the_flags_line() -> None:
    assert cpu_has_bf16(WITH_BF16)
    assert cpu_has_bf16("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert cpu_has_bf16(ARM)
    assert not cpu_has_bf16(WITHOUT)
    assert not cpu_has_bf16("model name\t: avx512_bf16 in a name is not a flag\n")


@pytest.mark.parametrize(
    ("precision", "cuda", "gpu_bf16", "cpu", "expected"),
    [
        # avx512_bf16 without AMX: bf16 autocast trained slower than fp32 (0.68x).
        ("auto", False, False, WITH_BF16, "no"),
        ("auto", False, False, AMX, "bf16"),
        ("auto", False, False, WITHOUT, "no"),
        ("fp32", False, False, WITH_BF16, "no"),
        ("bf16", False, False, WITH_BF16, "bf16"),
        ("auto", True, True, WITHOUT, "bf16"),
        ("auto", True, False, WITH_BF16, "no"),
        ("fp16", True, False, WITHOUT, "fp16"),
    ],
)
def test_precision_follows_the_spec_and_the_hardware(
    precision: str, cuda: bool, gpu_bf16: bool, cpu: str, expected: str
) -> None:
    assert (
        mixed_precision(precision, cuda, gpu_bf16, cpu_has_bf16(cpu), cpu_has_amx(cpu)) == expected
    )


def test_bf16_on_a_cpu_without_it_and_fp16_without_a_gpu_are_refused_at_start() -> None:
    with pytest.raises(PermanentError, match=r"spec.training.precision: bf16 .* use auto or fp32"):
        mixed_precision("bf16", False, False, cpu_has_bf16(WITHOUT))
    with pytest.raises(PermanentError, match=r"spec.training.precision: fp16 needs a GPU"):
        mixed_precision("fp16", False, False, cpu_has_bf16(WITH_BF16))
