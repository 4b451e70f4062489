"""Training state to checkpoint files and back: safetensors and JSON, no pickle.

Files of a snapshot:
  model.safetensors      weights
  optimizer.safetensors  optimizer tensors (AdamW moments, step counts)
  optimizer.json         the optimizer's other state and parameter groups
  scheduler.json         learning-rate scheduler state
  rng.safetensors        torch (and CUDA) generator states, per rank
  rng.json               Python and NumPy generator states, per rank
  trainer_state.json     step, epoch, per-rank data positions, totals, best metric
  data_index.json        the data plan and counts (and an evalFraction hold-out)
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .data import DataIndex, Position


@dataclass
class TrainerState:
    global_step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    world_size: int = 1
    positions: list[Position] = field(default_factory=list)
    best_metric: float | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["positions"] = [p.to_json() for p in self.positions]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TrainerState:
        positions = [Position.from_json(p) for p in doc.pop("positions", [])]
        return cls(positions=positions, **doc)


def rng_state() -> dict[str, Any]:
    """This process's generator states (gathered to rank 0 for the snapshot)."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": json.loads(json.dumps(random.getstate())),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _optimizer_split(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, values in opt_state["state"].items():
        rest["state"][str(idx)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                rest["state"][str(idx)][name] = value
    return tensors, rest


def _optimizer_join(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in rest["state"].items()}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save(
    dest: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    rng_by_rank: list[dict[str, Any]],
    index: DataIndex,
) -> int:
    """Write a snapshot; returns its size in bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    save_model(model, str(dest / "model.safetensors"))
    tensors, rest = _optimizer_split(optimizer.state_dict())
    save_file(tensors, str(dest / "optimizer.safetensors"))
    (dest / "optimizer.json").write_text(json.dumps(rest))
    (dest / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    rng_tensors = {
        f"{r}.{k}": v
        for r, s in enumerate(rng_by_rank)
        for k, v in s.items()
        if isinstance(v, torch.Tensor)
    }
    rng_other = [
        {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)} for s in rng_by_rank
    ]
    save_file(rng_tensors, str(dest / "rng.safetensors"))
    (dest / "rng.json").write_text(json.dumps(rng_other))
    (dest / "trainer_state.json").write_text(json.dumps(state.to_json(), indent=1))
    (dest / "data_index.json").write_text(json.dumps(index.to_json()))
    return sum(p.stat().st_size for p in dest.iterdir())


def load_trainer_state(src: Path) -> tuple[TrainerState, DataIndex]:
    state = TrainerState.from_json(json.loads((src / "trainer_state.json").read_text()))
    index = DataIndex.from_json(json.loads((src / "data_index.json").read_text()))
    return state, index


def restore(
    src: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int
) -> None:
    """Load weights, optimizer, scheduler and this rank's generator states."""
    load_model(model, str(src / "model.safetensors"))
    rest = json.loads((src / "optimizer.json").read_text())
    optimizer.load_state_dict(_optimizer_join(load_file(str(src / "optimizer.safetensors")), rest))
    scheduler.load_state_dict(json.loads((src / "scheduler.json").read_text()))
    rng_tensors = load_file(str(src / "rng.safetensors"))
    others = json.loads((src / "rng.json").read_text())
    if rank < len(others):
        mine = dict(others[rank])
        mine.update(
            {
                k.split(".", 1)[1]: v
                for k, v in rng_tensors.items()
                if k.split(".", 1)[0] == str(rank)
            }
        )
        set_rng_state(mine)
