"""The CPU step's plumbing: clipping fused into the AdamW step (optimizer.py) gives
what torch's clip_grad_norm_ and a step give, and a CPU trainer's large tensors
reuse their pages between steps (allocator.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from finetune_trainer.optimizer import clipped_step, fuses_clipping

ROOT = Path(__file__).resolve().parent.parent


def model_and_optimizer(fused: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused, foreach=not fused)
    return model, optimizer


def backward(model: torch.nn.Module, scale: float) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, generator=generator)
    (model(x).square().mean() * scale).backward()


@pytest.mark.parametrize("scale", [1e-4, 100.0], ids=["norm below max", "norm above max"])
def test_a_clipped_step_is_clip_grad_norm_then_the_step(scale: float) -> None:
    reference, ref_opt = model_and_optimizer(fused=True)
    fused, fused_opt = model_and_optimizer(fused=True)
    assert fuses_clipping(fused_opt)
    for _ in range(3):
        backward(reference, scale)
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad()
        backward(fused, scale)
        clipped_step(fused_opt, list(fused.parameters()), 1.0)
        fused_opt.zero_grad()
    assert (float(norm) > 1.0) == (scale > 1.0)  # both cases are what their ids say
    for ours, theirs in zip(fused.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    # The scale applies to that step only: a later plain step is unclipped.
    assert getattr(fused_opt, "grad_scale", None) is None


def test_clipping_stays_separate_where_the_step_cannot_take_it() -> None:
    _, foreach = model_and_optimizer(fused=False)
    assert not fuses_clipping(foreach)

    class WithScaler:  # accelerate's optimizer wrapper under fp16 loss scaling
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer, self.scaler = optimizer, object()

    _, fused = model_and_optimizer(fused=True)
    assert not fuses_clipping(WithScaler(fused))


FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from finetune_trainer.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    faults = []
    for _ in range(40):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        grad = torch.zeros(30522, 384)  # MiniLM's word embeddings' gradient, 47 MB
        del grad
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(max(faults[-4:]))
    """
)


@pytest.mark.parametrize("setting", ["keep", "default"])
def test_a_cpu_trainers_large_tensors_reuse_their_pages(setting: str) -> None:
    # A fresh process each, since the setting is the whole process's.
    env = {"PYTHONPATH": f"{ROOT / 'trainer_image'}:{ROOT / 'api'}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, setting],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    faults = int(done.stdout.split()[-1])
    # 47 MB is about 11,500 pages of 4 KB: mapped afresh, each faults once per step.
    # Kept, the heap grows for the first few steps (an aligned block does not fit
    # the one freed before it) until freed blocks merge, then the pages are reused.
    if setting == "keep":
        assert faults < 500
    else:
        assert faults > 5000
