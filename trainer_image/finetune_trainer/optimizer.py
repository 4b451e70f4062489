"""The optimizer step: AdamW with the spec's schedule, and gradient clipping.

Clipping scales every gradient by max_norm / norm when the norm is larger. Where the
optimizer is the fused AdamW kernel on the CPU, the scale goes into the step instead:
the kernel divides each gradient by `grad_scale` as it reads it (the hook that
mixed-precision loss scaling uses), which saves a pass that rewrites every gradient
in place. On a CPU that pass reads and writes the whole gradient (91 MB for MiniLM),
and MRPC's gradient norm is above 1.0 on almost every step. The norm itself is summed
from BLAS dot products, half the time of torch's vector_norm here. Bare steps 1.05x
(docs/benchmarks.md). The result is torch's clip_grad_norm_ followed by the step, up
to rounding (a division where it multiplies, another order of summing).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from finetune_api.types import TrainingSpec


def build_optimizer(model: torch.nn.Module, t: TrainingSpec, total: int) -> tuple[Any, Any]:
    """AdamW (no decay on biases and LayerNorm) and the spec's schedule with warm-up.

    The fused AdamW kernel, as the Trainer's default optimizer (adamw_torch_fused) uses,
    on CPUs too: the per-parameter loop of the plain implementation took a third of
    each CPU step. Devices without the kernel fall back to the multi-tensor one.
    """
    from transformers import get_scheduler

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        no_bias = p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias")
        (no_decay if no_bias else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:
        optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, fused=True)
    except RuntimeError:
        optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, foreach=True)
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * total)
    scheduler = get_scheduler(
        t.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total
    )
    return optimizer, scheduler


def fuses_clipping(optimizer: Any) -> bool:
    """Whether clipped_step scales the gradient inside `optimizer`'s step: the fused
    AdamW on the CPU, with no loss scaler of its own (fp16's) that uses the same hook.
    GPUs keep the separate pass, which is cheap next to their step (and this path has
    not run on one)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    scaler = getattr(optimizer, "scaler", None)
    on_cpu = all(p.device.type == "cpu" for g in inner.param_groups for p in g["params"])
    return bool(inner.defaults.get("fused")) and scaler is None and on_cpu


def clipped_step(optimizer: Any, parameters: list[torch.nn.Parameter], max_norm: float) -> None:
    """optimizer.step() on the gradient clipped to `max_norm` (see the module
    docstring); `optimizer` must pass fuses_clipping."""
    inner = getattr(optimizer, "optimizer", optimizer)
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = [torch.dot(g.reshape(-1), g.reshape(-1)) for g in grads]
    norm = torch.stack(squares).sum().sqrt()
    # As clip_grad_norm_: scaled by max_norm / (norm + 1e-6) when that is below 1.
    inner.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    try:
        optimizer.step()
    finally:
        inner.grad_scale = None
