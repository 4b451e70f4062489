"""Which examples make up each step, within a window of steps of one rank's stream.

Padding every micro-batch to its longest example wastes compute on pad tokens: on
MRPC a quarter of the tokens of randomly mixed batches of 8 are padding. With
`spec.training.groupByLength` (off by default) each rank reads the examples of WINDOW
steps at once, sorts them by length and cuts them into runs, one run per forward
pass, so each pass pads little. Lengths can go with labels (on MRPC the longest fifth
of pairs is 79% paraphrases, the shortest 59%), so a step made of one run trains on a
skewed batch; a step of k runs therefore takes one run from each of k strata of
lengths (longest to shortest), and the steps come in a seeded random order. Every
example is still trained on once per epoch (the same examples as without grouping,
the same per-step counts). Windows are aligned to the epoch's step plan, and
everything is a pure function of (seed, epoch, window, rank) and the window's
examples, so a run resumed from a checkpoint regroups a window exactly as the
uninterrupted run did: a checkpoint records where the stream was at the start of the
window it stopped in, and the resumed run drops the steps of that window already
taken. The window is the same idea as transformers' length-grouped sampler
(mega-batches of 50 batches) applied to a stream.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import TypeVar

WINDOW = 50  # steps per window

Item = TypeVar("Item")
Pos = TypeVar("Pos")
# How a window's examples are dealt to its steps: (examples, step sizes, window number)
# -> for each step, indices into the examples.
Order = Callable[[list[Item], list[int], int], list[list[int]]]


class ShortStream(Exception):
    """The stream ended before the epoch's planned examples."""


def plan_steps(
    examples: Iterator[tuple[Item, Pos]],
    sizes: list[int],
    start: Pos,
    skip: int,
    width: int,
    order: Order[Item],
) -> Iterator[tuple[list[Item], Pos]]:
    """Each step of the epoch from step `skip` on: its examples, and the position a
    checkpoint taken after it resumes from. `sizes` are this rank's example counts
    for every step of the epoch; `examples` (each with the stream's position after
    it) begin at `start`, the start of the window of `width` steps holding `skip`."""
    resume = start
    for w0 in range(window_of(skip, width), len(sizes), width):
        part = sizes[w0 : w0 + width]
        got = list(itertools.islice(examples, sum(part)))
        if len(got) < sum(part):
            raise ShortStream(f"{len(got)} examples left for steps of {sum(part)}")
        end = got[-1][1] if got else resume
        items = [e for e, _ in got]
        # A rank that ran dry near the epoch's end has windows of empty steps.
        steps = order(items, part, w0 // width) if items else [[] for _ in part]
        for j, chosen in enumerate(steps):
            if w0 + j >= skip:
                yield [items[i] for i in chosen], end if j == len(part) - 1 else resume
        resume = end


def run_size(micro_batch: int, passes_per_step: int, grouped: bool) -> int:
    """Examples per forward pass, for a micro-batch of `micro_batch` and a step of
    `passes_per_step` passes over every rank (world size x gradient accumulation). With
    length grouping each pass is one length and a step mixes lengths across its
    passes, so a step of a single pass (one process, no accumulation) is split in two:
    nothing would mix otherwise (docs/trainer.md)."""
    return -(-micro_batch // 2) if grouped and passes_per_step == 1 else micro_batch


def window_of(step: int, size: int) -> int:
    """The first step of the window holding `step` (counted from the epoch's start)."""
    return step - step % size


def group(
    lengths: list[int],
    sizes: list[int],
    seed: int,
    epoch: int,
    window: int,
    rank: int,
    run: int,
) -> list[list[int]]:
    """Indices into the window's examples for each step (step i gets sizes[i] of them,
    in runs of `run` examples padded together). The examples sorted by length (longest
    first, ties by stream order) are cut into runs; a full step's k runs come one from
    each of k strata of lengths; each stratum is shuffled with (seed, epoch, window,
    rank), so long and short steps are spread over the window."""
    if sum(sizes) != len(lengths):
        raise ValueError(f"{len(lengths)} examples for steps of {sum(sizes)}")
    by_length = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    runs = [by_length[at : at + run] for at in range(0, len(by_length), run)]
    # A short run (a window that is not whole runs) goes last, where the epoch's
    # short steps are, so every earlier step is made of whole runs.
    tail = runs.pop() if runs and len(runs[-1]) < run else None
    k = max(1, -(-max(sizes) // run))
    bounds = [len(runs) * s // k for s in range(k + 1)]
    strata = [runs[a:b] for a, b in itertools.pairwise(bounds)]
    rng = random.Random(f"{seed}/{epoch}/{window}/{rank}")
    for stratum in strata:
        rng.shuffle(stratum)
    dealt = [r for layer in itertools.zip_longest(*strata) for r in layer if r is not None]
    flat = [i for r in [*dealt, *([tail] if tail else [])] for i in r]
    steps, at = [], 0
    for size in sizes:
        steps.append(flat[at : at + size])
        at += size
    return steps


def grouped_by(
    lengths: Callable[[list[Item]], list[int]], seed: int, epoch: int, rank: int, run: int
) -> Order[Item]:
    """The length-grouped order in runs of `run`, measuring examples with `lengths`
    (token counts)."""

    def order(items: list[Item], sizes: list[int], window: int) -> list[list[int]]:
        return group(lengths(items), sizes, seed, epoch, window, rank, run)

    return order


def in_order(items: list[Item], sizes: list[int], window: int) -> list[list[int]]:
    """Without grouping: each step takes the next examples of the stream."""
    steps, at = [], 0
    for size in sizes:
        steps.append(list(range(at, at + size)))
        at += size
    return steps
