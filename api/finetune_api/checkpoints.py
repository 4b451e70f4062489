"""Where checkpoints live under spec.checkpoints.uri.

Each checkpoint is a folder `step-NNNNNNNNN/` (nine digits, so names sort by
step) holding its files and, written last, `manifest.json`: a folder without a
manifest is an upload cut short and never counts. The final model goes to
spec.output.uri, or `final/` under the checkpoint URI. `finetunejob.json` at the top
names the FineTuneJob (namespace and name) whose checkpoints these are: another job
with the same URI is refused instead of resuming from them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Final

MANIFEST: Final = "manifest.json"
FINAL_DIR: Final = "final"
OWNER: Final = "finetunejob.json"
_STEP_DIR = re.compile(r"step-(\d{9})")


def step_dir(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimizer steps."""
    return f"step-{step:09d}"


def step_of(folder: str) -> int | None:
    """The step of a checkpoint folder name; None for any other name."""
    match = _STEP_DIR.fullmatch(folder)
    return int(match.group(1)) if match else None


def owner_record(namespace: str, name: str) -> bytes:
    """The content of OWNER for a job."""
    return json.dumps({"namespace": namespace, "name": name}, sort_keys=True).encode()


def owner_of(record: bytes) -> str:
    """ "NAMESPACE/NAME" of an OWNER file's job."""
    doc = json.loads(record)
    return f"{doc['namespace']}/{doc['name']}"


def checkpoint_uri(base: str, step: int) -> str:
    return f"{base.rstrip('/')}/{step_dir(step)}"


def output_uri(checkpoints: str, output: str | None) -> str:
    """Where the final model is written."""
    return (output or f"{checkpoints.rstrip('/')}/{FINAL_DIR}").rstrip("/")


@dataclass(frozen=True)
class Committed:
    """A committed checkpoint: its step, folder and manifest (files, sizes, SHA-256,
    creation time, evaluation metrics)."""

    step: int
    folder: str
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.manifest.get("metrics") or {})

    @property
    def size(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.manifest.get("files", {}).values())

    def to_json(self) -> str:
        """One line, as `finetune-trainer checkpoints` prints it."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Committed:
        doc = json.loads(line)
        return cls(int(doc["step"]), str(doc["folder"]), dict(doc["manifest"]))
