"""Which examples make up each step, within a window of steps of one rank's stream.

Padding every micro-batch to its longest example wastes compute on pad tokens: on
MRPC a quarter of the tokens of randomly mixed batches of 8 are padding. With
`spec.training.groupByLength` (the default) each rank reads the examples of WINDOW
steps at once, sorts them by length, longest first, and gives each step the next
examples of that order, so the window's steps run from its longest examples to its
shortest and each micro-batch pads little. This is what transformers' length-grouped
sampler does with a mega-batch of 50 batches, applied to a stream; the window's
examples are a random draw (the stream is shuffled with the seed each epoch). Every
example is still trained on once per epoch, with the same per-step counts as without
grouping. Windows are aligned to the epoch's step plan, and the order is a pure
function of the window's examples, so a run resumed from a checkpoint regroups a
window exactly as the uninterrupted run did: a checkpoint records where the stream was
at the start of the window it stopped in, and the resumed run drops the steps of that
window already taken. Why not a shuffled or length-mixed order: docs/trainer.md.
"""

from __future__ import annotations

import itertools
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


def window_of(step: int, size: int) -> int:
    """The first step of the window holding `step` (counted from the epoch's start)."""
    return step - step % size


def group(lengths: list[int], sizes: list[int]) -> list[list[int]]:
    """Indices into the window's examples for each step (step i gets sizes[i] of them):
    the examples sorted by length, longest first (ties in stream order), cut in turn."""
    if sum(sizes) != len(lengths):
        raise ValueError(f"{len(lengths)} examples for steps of {sum(sizes)}")
    return _cut(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)), sizes)


def grouped_by(lengths: Callable[[list[Item]], list[int]]) -> Order[Item]:
    """The length-grouped order, measuring examples with `lengths` (token counts)."""

    def order(items: list[Item], sizes: list[int], window: int) -> list[list[int]]:
        return group(lengths(items), sizes)

    return order


def in_order(items: list[Item], sizes: list[int], window: int) -> list[list[int]]:
    """Without grouping: each step takes the next examples of the stream."""
    return _cut(list(range(len(items))), sizes)


def _cut(indices: list[int], sizes: list[int]) -> list[list[int]]:
    """`indices` cut in turn into steps of `sizes`."""
    steps, at = [], 0
    for size in sizes:
        steps.append(indices[at : at + size])
        at += size
    return steps
