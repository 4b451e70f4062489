"""Length-grouped batches (finetune_trainer.batching) over a real stream of MRPC pairs:
every example once per epoch across ranks, deterministic, exactly resumable, and far
less padding than batches in stream order."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from finetune_api.types import FineTuneJobSpec
from finetune_trainer.batching import WINDOW, group, in_order, plan_steps, run_size
from finetune_trainer.data import (
    Example,
    Position,
    Source,
    count_units,
    rank_examples,
    step_allocations,
    stream,
)
from trainer_support import mrpc_dataset

SEED, PER_RANK, WORLD = 42, 4, 2


@pytest.fixture(scope="module")
def mrpc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Source, Any, list[list[int]]]:
    """MRPC's training pairs from a local folder, counted for 2 ranks, and epoch 0's plan."""
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": "file:///unused"},
            "dataset": mrpc_dataset(),
            "checkpoints": {"uri": f"file://{tmp_path_factory.mktemp('ckpt')}"},
        }
    )
    source = Source(spec)
    units = source.plan_units(WORLD, 64 * 1024)
    index = count_units(source, units, list(range(len(units))))
    shares = [rank_examples(index, 0, SEED, r, WORLD) for r in range(WORLD)]
    return source, index, list(step_allocations(shares, PER_RANK))


def length(e: Example) -> int:
    return sum(len(t.split()) for t in e.texts)


def by_length(rank: int) -> Any:
    return lambda items, sizes, window: group(
        [length(e) for e in items], sizes, SEED, 0, window, rank, PER_RANK
    )


def epoch_steps(
    mrpc: tuple[Source, Any, list[list[int]]], rank: int, start: Position, skip: int, width: int
) -> list[tuple[list[Example], Position]]:
    source, index, plan = mrpc
    order = by_length(rank) if width > 1 else in_order
    examples = stream(source, index, start, SEED, rank, WORLD)
    return list(plan_steps(examples, [p[rank] for p in plan], start, skip, width, order))


def padded_fraction(steps: list[tuple[list[Example], Position]]) -> float:
    real = padded = 0
    for chosen, _ in steps:
        for i in range(0, len(chosen), PER_RANK):
            lengths = [length(e) for e in chosen[i : i + PER_RANK]]
            real += sum(lengths)
            padded += len(lengths) * max(lengths)
    return 1 - real / padded


def test_grouped_steps_cover_every_example_once_and_pad_little(
    mrpc: tuple[Source, Any, list[list[int]]],
) -> None:
    _, index, plan = mrpc
    grouped = [epoch_steps(mrpc, r, Position(), 0, WINDOW) for r in range(WORLD)]
    plain = [epoch_steps(mrpc, r, Position(), 0, 1) for r in range(WORLD)]
    # Each rank: one entry per planned step, of the planned size.
    for rank in range(WORLD):
        assert [len(c) for c, _ in grouped[rank]] == [p[rank] for p in plan]
    # Across ranks: exactly the examples of the epoch, each once, as without grouping.
    seen = Counter((e.texts, e.label) for steps in grouped for c, _ in steps for e in c)
    assert seen == Counter((e.texts, e.label) for steps in plain for c, _ in steps for e in c)
    assert sum(seen.values()) == sum(index.counts.values()) > 3600  # MRPC's train split
    assert max(seen.values()) == 1
    # Far less padding than batches in stream order (here in words, micro-batches of 4).
    before, after = padded_fraction(plain[0]), padded_fraction(grouped[0])
    assert before > 0.15, before
    assert after < before / 4, (before, after)
    # Not one long sorted run: a window's steps come in a random order of lengths.
    firsts = [max(length(e) for e in c) for c, _ in grouped[0][:WINDOW]]
    assert firsts != sorted(firsts, reverse=True)
    assert firsts != sorted(firsts)


def test_grouping_is_deterministic_and_differs_by_rank_window_and_epoch() -> None:
    lengths = [(i * 37) % 61 + 5 for i in range(400)]
    sizes = [8] * 50
    once = group(lengths, sizes, SEED, 0, 3, 0, 4)
    assert once == group(lengths, sizes, SEED, 0, 3, 0, 4)
    for other in ((SEED, 1, 3, 0), (SEED, 0, 4, 0), (SEED, 0, 3, 1), (7, 0, 3, 0)):
        assert group(lengths, sizes, *other, 4) != once, other
    assert sorted(i for step in once for i in step) == list(range(400))
    with pytest.raises(ValueError, match="401 examples for steps of 400"):
        group([*lengths, 9], sizes, SEED, 0, 0, 0, 4)


def test_a_step_of_two_runs_trains_on_a_long_run_and_a_short_one() -> None:
    # One process, steps of 8 in forward passes of 4: each pass pads little, and each
    # step mixes the longer half of the window's examples with the shorter half.
    lengths = [(i * 37) % 61 + 5 for i in range(397)]
    sizes = [8] * 49 + [5]
    steps = group(lengths, sizes, SEED, 0, 0, 0, 4)
    assert [len(s) for s in steps] == sizes
    assert sorted(i for step in steps for i in step) == list(range(397))
    median = sorted(lengths)[len(lengths) // 2]
    for step in steps[:-1]:
        first, second = [lengths[i] for i in step[:4]], [lengths[i] for i in step[4:]]
        assert min(first) >= median >= max(second), (first, second)
        assert max(first) - min(first) <= 2
        assert max(second) - min(second) <= 2
    # The last, short step holds what is left: a whole run and the one short run.
    assert len(steps[-1]) == 5


def test_a_step_is_split_into_two_passes_only_when_nothing_else_mixes_it() -> None:
    assert run_size(8, 1, grouped=True) == 4  # one process, one pass per step
    assert run_size(7, 1, grouped=True) == 4
    assert run_size(4, 2, grouped=True) == 4  # two ranks: a pass each
    assert run_size(4, 2, grouped=False) == 4
    assert run_size(8, 1, grouped=False) == 8  # batches in stream order are mixed
    assert run_size(1, 1, grouped=True) == 1


@pytest.mark.parametrize("stop", [1, 17, WINDOW - 1, WINDOW, WINDOW + 3, 2 * WINDOW + 20])
def test_a_run_resumed_after_any_step_gets_exactly_the_same_later_steps(
    mrpc: tuple[Source, Any, list[list[int]]], stop: int
) -> None:
    for rank in range(WORLD):
        full = epoch_steps(mrpc, rank, Position(), 0, WINDOW)
        # A checkpoint after step `stop` records the position its step resumes from.
        saved = full[stop - 1][1]
        resumed = epoch_steps(mrpc, rank, saved, stop, WINDOW)
        assert [c for c, _ in resumed] == [c for c, _ in full[stop:]], (rank, stop)
        assert [p for _, p in resumed] == [p for _, p in full[stop:]]


def test_a_rank_that_ran_dry_gets_empty_steps_without_measuring_nothing() -> None:
    def order(items: list[str], sizes: list[int], window: int) -> list[list[int]]:
        assert items, "asked to order no examples"
        return group([len(x) for x in items], sizes, SEED, 0, window, 0, 1)

    examples = iter([("bb", 1), ("a", 2), ("ccc", 3)])
    steps = list(plan_steps(examples, [2, 1, 0, 0], 0, 0, 2, order))
    assert sorted(len(c) for c, _ in steps[:2]) == [1, 2]
    assert steps[2:] == [([], 3), ([], 3)]
