"""What the reading plan is made of: examples, units, and positions in a stream."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

# CSV units of an index saved before CSV was cut at record starts (one line, one record).
LEGACY_CSV = "csv-lines"


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Unit:
    """A piece of one file that a rank reads on its own.

    `start`/`end` are bytes of a plain text file, rows of a parquet row group or
    of an Arrow record batch, or `0`/size for a compressed file (read whole, as
    a stream). `memory` is what reading it holds in memory: the uncompressed
    bytes of its row group or batch (0 for text, read block by block)."""

    key: str
    fmt: str
    start: int
    end: int
    memory: int = 0

    @property
    def ident(self) -> str:
        return f"{self.key}@{self.start}"


@dataclass(frozen=True)
class Slot:
    """One open unit: the index of the unit in the rank's epoch assignment, the
    start of its current block (None before its first block), how many records
    of that block (in shuffled order) are used up, and how many examples the
    unit has given this epoch."""

    unit: int
    block_start: int | None = None
    taken: int = 0
    used: int = 0


@dataclass(frozen=True)
class Position:
    """Where one rank is in its stream for the current epoch."""

    epoch: int = 0
    next_unit: int = 0
    draws: int = 0
    slots: tuple[Slot, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Position:
        slots = tuple(Slot(**s) for s in doc["slots"])
        return cls(doc["epoch"], doc["next_unit"], doc["draws"], slots)


@dataclass
class DataIndex:
    """What the counting pass learns; saved with each checkpoint."""

    units: list[Unit]
    counts: dict[str, int]
    eval_examples: list[Example] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "csvCuts": "records",
            "units": [asdict(u) for u in self.units],
            "counts": self.counts,
            "eval": [[list(e.texts), e.label] for e in self.eval_examples],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DataIndex:
        units = [Unit(**u) for u in doc["units"]]
        if doc.get("csvCuts") != "records":
            # Saved by a trainer that cut CSV files at line starts and read a line as a
            # record: its counts hold for that reading only, so it goes on reading so.
            units = [replace(u, fmt=LEGACY_CSV) if u.fmt == "csv" else u for u in units]
        return cls(
            units=units,
            counts={k: int(v) for k, v in doc["counts"].items()},
            eval_examples=[Example(tuple(t), int(label)) for t, label in doc["eval"]],
        )
