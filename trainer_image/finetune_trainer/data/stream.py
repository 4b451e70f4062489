"""A rank's examples for an epoch: units dealt to ranks, read in shuffled blocks,
drawn from several open units at once, with a position that resumes exactly."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from .columnar import COLUMNAR_MEMORY
from .text import MARGIN
from .units import DataIndex, Example, Position, Slot, Unit

if TYPE_CHECKING:
    from .source import Source

BLOCK = 512
SLOTS = 32


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
        width = min(width, max(1, COLUMNAR_MEMORY // largest))
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
