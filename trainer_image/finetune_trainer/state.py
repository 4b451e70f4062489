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
from safetensors.torch import load_file, load_model

from .data import DataIndex, Position
from .handoff import Arena, Snapshot
from .tensorfile import Layout, layout


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
                tensors[f"{idx}.{name}"] = value.detach()  # copied by CheckpointFiles.snapshot()
            else:
                rest["state"][str(idx)][name] = value
    return tensors, rest


def _optimizer_join(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in rest["state"].items()}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state with tied tensors once (safetensors stores no aliases), and
    the dropped names as metadata, as `safetensors.torch.save_model` writes them."""
    state = model.state_dict()
    by_storage: dict[tuple[str, int, int] | str, list[str]] = {}
    for name, value in state.items():
        storage = value.untyped_storage()
        shared = (str(value.device), storage.data_ptr(), storage.nbytes())
        # Empty tensors (and meta ones) share no memory, whatever their pointers say.
        alone = value.is_meta or storage.data_ptr() == 0 or storage.nbytes() == 0
        by_storage.setdefault(name if alone else shared, []).append(name)
    dropped: dict[str, str] = {}
    for names in by_storage.values():
        whole = sorted(n for n in names if _covers_storage(state[n]))
        if len(names) > 1 and not whole:
            raise RuntimeError(f"tensors {sorted(names)} share memory and none covers it all")
        for name in names:
            if len(names) > 1 and name != whole[0]:
                dropped[name] = whole[0]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def _covers_storage(t: torch.Tensor) -> bool:
    return bool(
        t.storage_offset() == 0 and t.numel() * t.element_size() == t.untyped_storage().nbytes()
    )


@dataclass
class CheckpointFiles:
    """A checkpoint's files, planned: tensors laid out, documents encoded, nothing
    copied yet."""

    images: dict[str, Layout]
    texts: dict[str, bytes]

    @property
    def sizes(self) -> dict[str, int]:
        return {
            **{k: v.size for k, v in self.images.items()},
            **{k: len(v) for k, v in self.texts.items()},
        }

    def snapshot(self, arena: Arena | None = None) -> Snapshot:
        """Copy the files into memory the upload process can map (handoff.py), in
        `arena` when given: training pauses only for these copies (273 MB for MiniLM
        with AdamW)."""
        snap = Snapshot.allocate(self.sizes, arena)
        for name, planned in self.images.items():
            planned.write(snap.view(name))
        for name, text in self.texts.items():
            snap.view(name)[:] = text
        return snap


def checkpoint_files(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    rng_by_rank: list[dict[str, Any]],
    index: DataIndex,
) -> CheckpointFiles:
    """What a checkpoint of this state holds, file by file."""
    weights, dropped = _model_tensors(model)
    tensors, rest = _optimizer_split(optimizer.state_dict())
    rng_tensors = {
        f"{r}.{k}": v
        for r, s in enumerate(rng_by_rank)
        for k, v in s.items()
        if isinstance(v, torch.Tensor)
    }
    rng_other = [
        {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)} for s in rng_by_rank
    ]
    documents = {
        "optimizer.json": json.dumps(rest),
        "scheduler.json": json.dumps(scheduler.state_dict()),
        "rng.json": json.dumps(rng_other),
        "trainer_state.json": json.dumps(state.to_json(), indent=1),
        "data_index.json": json.dumps(index.to_json()),
    }
    images = {
        "model.safetensors": layout(weights, dropped),
        "optimizer.safetensors": layout(tensors),
        "rng.safetensors": layout(rng_tensors),
    }
    return CheckpointFiles(images, {k: v.encode() for k, v in documents.items()})


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
