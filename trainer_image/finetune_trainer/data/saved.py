"""Folders written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

A Dataset folder holds `state.json` (its Arrow files, in order),
`dataset_info.json` (its features) and `data-*.arrow` (IPC streams). A DatasetDict
folder holds `dataset_dict.json` (the split names) and one Dataset folder per split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import PermanentError
from ..storage import ObjectInfo, Store, object_uri

MARKERS = ("dataset_dict.json", "state.json")


@dataclass
class SavedSplit:
    folder: str
    files: list[ObjectInfo]
    features: dict[str, Any]

    def class_names(self, column: str) -> list[str] | None:
        """The names of a ClassLabel column, read with the `datasets` library's types."""
        from datasets import ClassLabel, Features

        feature = Features.from_dict(self.features).get(column) if self.features else None
        return list(feature.names) if isinstance(feature, ClassLabel) else None


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _folder(key: str) -> str:
    return key.rsplit("/", 1)[0] if "/" in key else ""


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def is_saved(files: list[ObjectInfo]) -> bool:
    return any(_name(f.key) in MARKERS for f in files)


def not_saved(uri: str, files: list[ObjectInfo]) -> PermanentError:
    names = sorted({_name(f.key) for f in files})
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return PermanentError(
        f"spec.dataset.uri: {uri} is not a folder written by save_to_disk: it has no "
        f"dataset_dict.json (a DatasetDict) and no state.json (a Dataset); it holds: {shown}"
    )


def saved_splits(store: Store, files: list[ObjectInfo], uri: str) -> dict[str, SavedSplit]:
    """The splits of a save_to_disk folder by name; a lone Dataset is the split ''."""
    by_key = {f.key: f for f in files}
    # The top-most marker; a DatasetDict's own before its splits' state.json.
    markers = sorted(
        (f.key for f in files if _name(f.key) in MARKERS),
        key=lambda k: (k.count("/"), MARKERS.index(_name(k))),
    )
    if not markers:
        raise not_saved(uri, files)
    root = _folder(markers[0])
    if _name(markers[0]) == "state.json":
        return {"": _split(store, by_key, root, uri)}
    doc = _json(store, markers[0], uri)
    names = doc.get("splits") if isinstance(doc, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        where = object_uri(store, markers[0])
        raise PermanentError(f"spec.dataset.uri: {where} lists no splits")
    return {name: _split(store, by_key, _join(root, name), uri) for name in names}


def _json(store: Store, key: str, uri: str) -> Any:
    try:
        return json.loads(store.get_bytes(key))
    except ValueError:
        where = object_uri(store, key)
        raise PermanentError(
            f"spec.dataset.uri: {where} is not valid JSON; write {uri} again with save_to_disk"
        ) from None


def _split(store: Store, by_key: dict[str, ObjectInfo], folder: str, uri: str) -> SavedSplit:
    for name in ("state.json", "dataset_info.json"):
        if _join(folder, name) not in by_key:
            raise PermanentError(
                f"spec.dataset.uri: {uri}: the split folder {object_uri(store, folder)}/ "
                f"has no {name}; "
                "write the dataset again with save_to_disk"
            )
    state = _json(store, _join(folder, "state.json"), uri)
    info = _json(store, _join(folder, "dataset_info.json"), uri)
    listed = [d.get("filename") for d in state.get("_data_files", []) if isinstance(d, dict)]
    keys = [_join(folder, str(name)) for name in listed]
    missing = [k for k in keys if k not in by_key]
    if missing or not keys:
        raise PermanentError(
            f"spec.dataset.uri: {object_uri(store, _join(folder, 'state.json'))} lists "
            + (f"{_name(missing[0])}, which is missing" if missing else "no data files")
        )
    features = info.get("features") if isinstance(info, dict) else None
    return SavedSplit(folder, [by_key[k] for k in keys], features or {})
