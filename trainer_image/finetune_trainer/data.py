"""Streaming training data: plan, shard, read, resume.

Files are cut into *units* (line-aligned byte ranges of jsonl/csv/tsv, row
ranges inside one parquet row group). Each epoch the units are shuffled with
the seed and dealt to the ranks, balanced by example count. A rank reads up to
SLOTS units at once in shuffled blocks of BLOCK records (one bounded ranged
read each) and draws from them weighted by what each has left, so batches mix
the whole file even when it is sorted by label. The read position (epoch, next
unit, draw number, per open unit its block and offsets) is saved with each
checkpoint: a resume re-reads at most one block per open unit, whatever the
step. `step_allocations` gives every step but an epoch's last the full global
batch. A first pass counts examples per unit and holds out evalFraction; rows
with an empty text are skipped, as the Hugging Face recipe does.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import itertools
import json
import math
import random
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from finetune_api.types import DatasetSpec, FineTuneJobSpec, HubSpec

from .errors import PermanentError
from .storage import HubStore, ObjectInfo, Store, chunk_lines, resolve_files

BLOCK = 512
SLOTS = 32
# Bytes asked for beyond an estimated end, for the line running across it.
MARGIN = 4 * 1024
MIN_SHARD_BYTES = 16 * 1024
# Uncompressed parquet row groups a rank keeps in memory; it also caps how many
# parquet units are open at once (one row group each, at most).
PARQUET_MEMORY = 1 << 30
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Unit:
    """A piece of one file: bytes [start, end), or rows [start, end) of a parquet file
    (always inside one row group). `memory` is what reading it holds in memory: the
    uncompressed bytes of its row group (0 for text files, read block by block)."""

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
            "units": [asdict(u) for u in self.units],
            "counts": self.counts,
            "eval": [[list(e.texts), e.label] for e in self.eval_examples],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DataIndex:
        return cls(
            units=[Unit(**u) for u in doc["units"]],
            counts={k: int(v) for k, v in doc["counts"].items()},
            eval_examples=[Example(tuple(t), int(label)) for t, label in doc["eval"]],
        )


def file_format(key: str, declared: str) -> str:
    if declared != "auto":
        return declared
    name = key.lower().removesuffix(".gz")
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise PermanentError(
        f"spec.dataset.format: cannot tell the format of {key!r} from its extension; "
        "set format to jsonl, csv, tsv or parquet"
    )


def _stem(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def hub_files(spec: DatasetSpec, hub: HubSpec | None) -> tuple[HubStore, list[ObjectInfo]]:
    """The data files of an hf:// dataset: those of its `config` folder, if set."""
    store = HubStore(spec.uri[len("hf://") :], spec.revision, hub)
    files = store.list_objects(spec.config or "")
    data = [f for f in files if "." + f.key.rsplit(".", 1)[-1] in FORMATS and f.size > 0]
    if not data and spec.config:
        folders = sorted({f.key.split("/", 1)[0] for f in store.list_objects() if "/" in f.key})
        raise PermanentError(
            f"spec.dataset.config: {spec.uri} has no data files under {spec.config}/; "
            f"its folders are: {', '.join(folders) or 'none'}"
        )
    return store, data


def split_files(files: list[ObjectInfo], split: str, fallback_all: bool) -> list[ObjectInfo]:
    """Files of a split: those whose name starts with the split name, or that lie in a
    folder named after it (the Hub's parquet layout: CONFIG/SPLIT/0000.parquet)."""
    chosen = [f for f in files if _stem(f.key).startswith(split) or split in f.key.split("/")[:-1]]
    if chosen:
        return chosen
    return files if fallback_all else []


class RangeFile(io.RawIOBase):
    """A seekable, read-only file over ranged reads of one stored object."""

    def __init__(self, store: Store, key: str, size: int) -> None:
        self.store, self.key, self.size, self.pos = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def readinto(self, buffer: Any) -> int:
        end = min(self.size, self.pos + len(buffer))
        if end <= self.pos:
            return 0
        with self.store.read_range(self.key, self.pos, end) as body:
            data = body.read()
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class Source:
    """The dataset's files and how to read examples out of them."""

    def __init__(self, spec: FineTuneJobSpec) -> None:
        self.spec: DatasetSpec = spec.dataset
        self.num_labels = spec.model.num_labels
        self.label_names = spec.model.label_names or []
        uri = self.spec.uri
        self.store: Store
        if uri.startswith("hf://"):
            self.store, files = hub_files(self.spec, spec.hub)
        else:
            self.store, files = resolve_files(uri, spec.s3)
        if not files:
            raise PermanentError(f"spec.dataset.uri: no data files found at {uri}")
        # A single file is the training split, and evalSplit names a sibling file.
        single = len(files) == 1 and not uri.startswith("hf://")
        self.train_files = split_files(
            files, self.spec.train_split, fallback_all=self.spec.eval_split is None or single
        )
        self.eval_files: list[ObjectInfo] = []
        if self.spec.eval_split:
            pool = files
            if single:
                # A single file is the training split; evalSplit names a sibling.
                parent = files[0].key.rsplit("/", 1)[0] if "/" in files[0].key else ""
                _, pool = resolve_files(_sibling_uri(uri, parent), spec.s3)
            self.eval_files = split_files(pool, self.spec.eval_split, fallback_all=False)
            self.train_files = [f for f in self.train_files if f not in self.eval_files]
            if not self.eval_files:
                raise PermanentError(
                    f"spec.dataset.evalSplit: no file named {self.spec.eval_split}* next to "
                    f"the training data at {uri}"
                )
        if not self.train_files:
            raise PermanentError(
                f"spec.dataset.trainSplit: no file named {self.spec.train_split}* at {uri}"
            )
        self._headers: dict[str, list[str]] = {}
        self._checked: set[str] = set()
        self._parquet_files: dict[str, Any] = {}
        self._starts: dict[str, list[int]] = {}
        self._row_groups: OrderedDict[tuple[str, int], tuple[int, list[dict[str, Any]]]] = (
            OrderedDict()
        )
        self._sizes = {f.key: f.size for f in [*self.train_files, *self.eval_files]}

    # --- planning ------------------------------------------------------------------

    def plan_units(self, world_size: int, max_shard_bytes: int) -> list[Unit]:
        total = sum(f.size for f in self.train_files)
        # Many small units per rank balance the ranks; one rank needs no balancing.
        pieces = max(1, world_size) * 16
        target = max(MIN_SHARD_BYTES, min(max_shard_bytes, total // pieces))
        units: list[Unit] = []
        for f in sorted(self.train_files, key=lambda f: f.key):
            fmt = file_format(f.key, self.spec.format)
            if fmt == "parquet":
                units += self._parquet_units(f, target)
            else:
                n = -(-f.size // target)
                bounds = [f.size * k // n for k in range(n + 1)]
                units += [Unit(f.key, fmt, a, b) for a, b in itertools.pairwise(bounds)]
        return units

    # --- reading -------------------------------------------------------------------

    def _parquet(self, key: str) -> Any:
        """The parquet file, read lazily: its footer, then only the row groups asked for."""
        import pyarrow.parquet as pq

        if key not in self._parquet_files:
            size = self._sizes[key]
            self._parquet_files[key] = pq.ParquetFile(RangeFile(self.store, key, size))
        return self._parquet_files[key]

    def _group_starts(self, key: str) -> list[int]:
        """The first row of each row group, and the file's row count last (kept: every
        block load of a parquet unit looks its row group up here)."""
        if key not in self._starts:
            meta = self._parquet(key).metadata
            sizes = (meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            self._starts[key] = [0, *itertools.accumulate(sizes)]
        return self._starts[key]

    def _parquet_units(self, f: ObjectInfo, target: int) -> list[Unit]:
        """Row ranges of about `target` file bytes, none across a row group's edge,
        so even a file of one row group is many units."""
        meta = self._parquet(f.key).metadata
        starts = self._group_starts(f.key)
        bytes_per_row = f.size / max(1, starts[-1])
        units: list[Unit] = []
        for g in range(meta.num_row_groups):
            first, rows = starts[g], starts[g + 1] - starts[g]
            n = max(1, min(rows, round(rows * bytes_per_row / target)))
            memory = int(meta.row_group(g).total_byte_size)
            bounds = [first + rows * k // n for k in range(n + 1)]
            units += [Unit(f.key, "parquet", a, b, memory) for a, b in itertools.pairwise(bounds)]
        return units

    def _row_group(self, key: str, group: int) -> list[dict[str, Any]]:
        """The rows of a parquet row group (the needed columns only). Groups stay
        cached up to PARQUET_MEMORY bytes, so the open units' groups are read once."""
        ident = (key, group)
        if ident in self._row_groups:
            self._row_groups.move_to_end(ident)
            return self._row_groups[ident][1]
        parquet = self._parquet(key)
        if key not in self._checked:
            self._check_columns(parquet.schema_arrow.names, key)
            self._checked.add(key)
        wanted = list(dict.fromkeys([*self.spec.text_columns, self.spec.label_column]))
        rows: list[dict[str, Any]] = parquet.read_row_group(group, columns=wanted).to_pylist()
        size = int(parquet.metadata.row_group(group).total_byte_size)
        self._row_groups[ident] = (size, rows)
        while len(self._row_groups) > 1 and (
            sum(v[0] for v in self._row_groups.values()) > PARQUET_MEMORY
        ):
            self._row_groups.popitem(last=False)
        return rows

    def header(self, unit: Unit) -> list[str]:
        if unit.key not in self._headers:
            first = next(chunk_lines(self.ranges(unit.key, 0, MARGIN)), b"")
            self._headers[unit.key] = self._split(first.decode("utf-8-sig"), unit.fmt)
            self._check_columns(self._headers[unit.key], unit.key)
        return self._headers[unit.key]

    @staticmethod
    def _split(line: str, fmt: str) -> list[str]:
        line = line.rstrip("\r\n")
        if fmt == "tsv":
            return line.split("\t")
        return next(csv.reader([line]), [])

    def _check_columns(self, columns: list[str], where: str) -> None:
        wanted = [*self.spec.text_columns, self.spec.label_column]
        missing = [c for c in wanted if c not in columns]
        if missing:
            field_name = "labelColumn" if missing == [self.spec.label_column] else "textColumns"
            raise PermanentError(
                f"spec.dataset.{field_name}: column {missing[0]!r} not found in {where}; "
                f"the data has columns: {', '.join(columns)}"
            )

    def to_example(self, row: dict[str, Any], where: str) -> Example | None:
        try:
            texts = tuple(row[c] for c in self.spec.text_columns)
            raw = row[self.spec.label_column]
        except KeyError:
            self._check_columns(list(row), where)
            raise
        if any(t is None or str(t).strip() == "" for t in texts):
            return None
        label = self._label(raw, where)
        return Example(tuple(str(t) for t in texts), label)

    def _label(self, raw: Any, where: str) -> int:
        if isinstance(raw, str) and raw in self.label_names:
            return self.label_names.index(raw)
        try:
            label = int(raw)
            if isinstance(raw, float) and raw != label:
                raise ValueError
        except (TypeError, ValueError):
            raise PermanentError(
                f"spec.dataset.labelColumn: label {raw!r} in {where} is not an integer"
                + (f" or one of {self.label_names}" if self.label_names else "")
            ) from None
        if not 0 <= label < self.num_labels:
            raise PermanentError(
                f"spec.model.numLabels: label {label} in {where} is outside 0.."
                f"{self.num_labels - 1}; raise numLabels or fix the data"
            )
        return label

    def ranges(self, key: str, start: int, window: int) -> Iterator[bytes]:
        """The bytes of an object from `start` on, as bounded ranged reads.

        Each read asks for `window` bytes (doubling from one read to the next) and
        is read to its end before it is yielded. A reader that stops early has
        therefore been sent at most one window it did not use, never the rest of
        the object, and no S3 response is abandoned half-read (which would also
        cost its pooled connection).
        """
        size = self._sizes[key]
        while start < size:
            end = min(size, start + max(1, window))
            with self.store.read_range(key, start, end) as body:
                data = body.read()
            if not data:
                return
            yield data
            start += len(data)
            window *= 2

    def records(
        self, unit: Unit, block_start: int | None, window: int | None = None
    ) -> Generator[tuple[int, Example | None], None, None]:
        """(offset, example) for each record of a unit, from block_start on.

        The offset is where the record starts (a byte offset, or a parquet row
        number); it is what positions and hold-outs refer to.
        `window` is how many bytes the first ranged read asks for (at most, and by
        default, the rest of the unit); a reader that wants only a block passes its size.
        """
        where = unit.key
        if unit.fmt == "parquet":
            starts = self._group_starts(unit.key)
            group = bisect.bisect_right(starts, unit.start) - 1
            rows = self._row_group(unit.key, group)
            for i in range(unit.start if block_start is None else block_start, unit.end):
                yield i, self.to_example(rows[i - starts[group]], f"{where} row {i}")
            return
        header = self.header(unit) if unit.fmt in ("csv", "tsv") else None
        begin = unit.start if block_start is None else block_start
        skip_partial = block_start is None and unit.start > 0
        read_from = begin - 1 if skip_partial else begin
        rest = unit.end - read_from + MARGIN
        first = min(window, rest) if window else rest
        offset = read_from
        lines = chunk_lines(self.ranges(unit.key, read_from, first))
        if skip_partial:
            # The line running across our start belongs to the previous unit.
            offset += len(next(lines, b""))
        for raw in lines:
            start = offset
            offset += len(raw)
            if start >= unit.end:
                break
            if start == 0 and header is not None:
                continue
            text = raw.decode("utf-8-sig" if start == 0 else "utf-8").strip()
            if not text:
                continue
            yield start, self._parse(text, unit.fmt, header, f"{where} at byte {start}")

    def _parse(self, text: str, fmt: str, header: list[str] | None, where: str) -> Example | None:
        if fmt == "jsonl":
            try:
                row = json.loads(text)
            except ValueError:
                raise PermanentError(f"spec.dataset: {where} is not valid JSON") from None
            if not isinstance(row, dict):
                raise PermanentError(f"spec.dataset: {where} is not a JSON object")
            return self.to_example(row, where)
        assert header is not None
        values = self._split(text, fmt)
        return self.to_example(dict(zip(header, values, strict=False)), where)

    def read_eval_files(self) -> list[Example]:
        out: list[Example] = []
        for f in sorted(self.eval_files, key=lambda f: f.key):
            fmt = file_format(f.key, self.spec.format)
            bounds = self._group_starts(f.key) if fmt == "parquet" else [0, f.size]
            for a, b in itertools.pairwise(bounds):
                unit = Unit(f.key, fmt, a, b)
                out += [e for _, e in self.records(unit, None) if e is not None]
        return out


def _sibling_uri(uri: str, parent: str) -> str:
    if uri.startswith("s3://"):
        bucket = uri[len("s3://") :].split("/", 1)[0]
        return f"s3://{bucket}/{parent}/" if parent else f"s3://{bucket}/"
    scheme = uri.split("://", 1)[0]
    if scheme == "pvc":
        claim = uri[len("pvc://") :].split("/", 1)[0]
        return f"pvc://{claim}/{parent}"
    if scheme == "file":
        return f"file:///{parent}"
    raise PermanentError(
        f"spec.dataset.evalSplit: {uri} is a single file with no listable siblings; "
        "use evalFraction to hold out evaluation data"
    )


def held_out(unit: Unit, offset: int, fraction: float | None) -> bool:
    """Deterministically hold out about `fraction` of the examples for evaluation."""
    if not fraction:
        return False
    digest = hashlib.blake2b(f"{unit.key}:{unit.start}:{offset}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64 < fraction


def count_units(source: Source, units: list[Unit], mine: list[int]) -> DataIndex:
    """The counting pass over the units with the given indices."""
    fraction = source.spec.eval_fraction
    counts: dict[str, int] = {}
    held: list[Example] = []
    for i in mine:
        unit = units[i]
        n = 0
        for offset, example in source.records(unit, None):
            if example is None:
                continue
            if held_out(unit, offset, fraction):
                held.append(example)
            else:
                n += 1
        counts[unit.ident] = n
    return DataIndex(units, counts, held)


def epoch_assignment(
    index: DataIndex, epoch: int, seed: int, rank: int, world_size: int
) -> list[Unit]:
    """The units a rank reads in an epoch.

    The units are shuffled with (seed, epoch), then each goes to the rank with
    the fewest examples so far, so ranks finish their epoch together.
    """
    order = list(index.units)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    loads = [0] * world_size
    mine: list[Unit] = []
    for unit in order:
        target = min(range(world_size), key=lambda r: (loads[r], r))
        loads[target] += index.counts.get(unit.ident, 0)
        if target == rank:
            mine.append(unit)
    return mine


def rank_examples(index: DataIndex, epoch: int, seed: int, rank: int, world_size: int) -> int:
    return sum(
        index.counts[u.ident] for u in epoch_assignment(index, epoch, seed, rank, world_size)
    )


def step_allocations(shares: list[int], per_rank: int) -> Iterator[list[int]]:
    """Examples each rank contributes to each optimizer step of an epoch.

    Every rank gives per_rank while it can; what a rank that runs dry cannot
    give is taken from the ranks with the most left, so each step but the
    epoch's last holds len(shares) x per_rank examples. An epoch therefore has
    ceil(sum(shares) / (len(shares) x per_rank)) steps, like one process.
    """
    remaining = list(shares)
    batch = per_rank * len(shares)
    while sum(remaining) > 0:
        take = [min(per_rank, left) for left in remaining]
        spare = min(batch, sum(remaining)) - sum(take)
        for r in sorted(range(len(remaining)), key=lambda r: (take[r] - remaining[r], r)):
            extra = min(spare, remaining[r] - take[r])
            take[r] += extra
            spare -= extra
        remaining = [left - t for left, t in zip(remaining, take, strict=True)]
        yield take


class _OpenUnit:
    """A unit being read block by block; its slot is its resumable state."""

    def __init__(
        self, source: Source, unit: Unit, slot: Slot, seed: int, epoch: int, count: int
    ) -> None:
        self.source, self.unit, self.slot = source, unit, slot
        self.seed, self.epoch, self.count = seed, epoch, count
        # One block's bytes at the unit's average record size, with a quarter to spare.
        per_record = (unit.end - unit.start) / max(1, count)
        self.window = math.ceil(per_record * (BLOCK + 1) * 1.25) + MARGIN
        self.block: list[tuple[int, Example | None]] | None = None
        self.order: list[int] = []
        self.next_start: int | None = None

    def _load(self, start: int | None) -> bool:
        records = self.source.records(self.unit, start, self.window)
        got = list(itertools.islice(records, BLOCK + 1))
        self.next_start = got[BLOCK][0] if len(got) > BLOCK else None
        self.block = got[:BLOCK]
        if not self.block:
            return False
        first = self.block[0][0]
        self.slot = replace(self.slot, block_start=first)
        self.order = list(range(len(self.block)))
        random.Random(f"{self.seed}:{self.epoch}:{self.unit.ident}:{first}").shuffle(self.order)
        return True

    def next(self) -> tuple[int, Example | None] | None:
        """The next record in shuffled block order; None once the unit is used up."""
        if self.block is None and not self._load(self.slot.block_start):
            return None
        assert self.block is not None
        while self.slot.taken >= len(self.block):
            if self.next_start is None or not self._load(self.next_start):
                return None
            self.slot = replace(self.slot, taken=0)
        record = self.block[self.order[self.slot.taken]]
        self.slot = replace(self.slot, taken=self.slot.taken + 1)
        return record

    @property
    def left(self) -> int:
        """Usable examples not given yet (the counting pass knows the unit's total)."""
        return self.count - self.slot.used

    def gave(self) -> None:
        self.slot = replace(self.slot, used=self.slot.used + 1)


def _pick(seed: int, epoch: int, rank: int, draw: int, weights: list[int]) -> int:
    """An index drawn with probability proportional to its weight, by a seeded hash."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{rank}:{draw}".encode(), digest_size=8).digest()
    x = int.from_bytes(digest, "big") % sum(weights)
    for i, w in enumerate(weights):
        if x < w:
            return i
        x -= w
    raise AssertionError("unreachable: x < sum(weights)")


def stream(
    source: Source, index: DataIndex, position: Position, seed: int, rank: int, world_size: int
) -> Iterator[tuple[Example, Position]]:
    """The examples of one rank for position.epoch, from position on.

    Yields each example with the position just after it; a checkpoint stores
    the position of the last example a step consumed.
    """
    epoch = position.epoch
    units = epoch_assignment(index, epoch, seed, rank, world_size)
    fraction = source.spec.eval_fraction

    def opened(slot: Slot) -> _OpenUnit:
        unit = units[slot.unit]
        return _OpenUnit(source, unit, slot, seed, epoch, index.counts.get(unit.ident, 0))

    # At most SLOTS open at once, in groups of even size (17 units: 9, then 8), so no
    # unit is left to run alone at the end of the epoch.
    width = -(-len(units) // -(-len(units) // SLOTS)) if units else 0
    largest = max((u.memory for u in units), default=0)
    if largest:
        width = min(width, max(1, PARQUET_MEMORY // largest))
    open_units = [o for o in map(opened, position.slots) if o.left > 0]
    next_unit, draws = position.next_unit, position.draws
    while True:
        while len(open_units) < width and next_unit < len(units):
            unit = opened(Slot(next_unit))
            next_unit += 1
            if unit.left > 0:
                open_units.append(unit)
        if not open_units:
            return
        # Weighted by what each unit has left, so the open units run out together
        # and the end of an epoch is as mixed as its start.
        i = _pick(seed, epoch, rank, draws, [o.left for o in open_units])
        draws += 1
        record = open_units[i].next()
        if record is None:
            # Fewer records than counted: the data changed (the loop reports it).
            del open_units[i]
            continue
        offset, example = record
        if example is None or held_out(open_units[i].unit, offset, fraction):
            continue
        open_units[i].gave()
        if open_units[i].left == 0:
            del open_units[i]
        yield example, Position(epoch, next_unit, draws, tuple(o.slot for o in open_units))
