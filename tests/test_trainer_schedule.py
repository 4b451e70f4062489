"""When the loop logs, evaluates and saves (finetune_trainer.schedule), without torch."""

from __future__ import annotations

from typing import Any

from finetune_api.types import CheckpointSpec, TrainingSpec
from finetune_trainer.schedule import Schedule


def schedule(
    total: int = 100, checkpoints: dict[str, Any] | None = None, **training: Any
) -> Schedule:
    return Schedule(
        TrainingSpec.model_validate(training),
        CheckpointSpec.model_validate({"uri": "s3://ckpt/x", **(checkpoints or {})}),
        total,
    )


def test_logging_every_n_steps_and_at_the_last_step() -> None:
    s = schedule(total=23, loggingSteps=10)
    assert [step for step in range(1, 24) if s.log(step)] == [10, 20, 23]


def test_evaluation_by_steps_by_epoch_or_never_and_once_at_the_end() -> None:
    steps = schedule(total=50, evalStrategy="steps", evalSteps=20)
    assert [n for n in range(1, 51) if steps.evaluate(n, epoch_ended=n % 25 == 0)] == [20, 40]
    assert steps.evaluate_at_end(last_evaluated=40)
    epoch = schedule(total=50, evalStrategy="epoch")
    assert [n for n in range(1, 51) if epoch.evaluate(n, epoch_ended=n % 25 == 0)] == [25]
    assert epoch.evaluate_at_end(last_evaluated=25)  # the last epoch's end is the run's end
    assert not epoch.evaluate_at_end(last_evaluated=50)
    never = schedule(total=50, evalStrategy="no")
    assert not any(never.evaluate(n, True) for n in range(1, 51))
    assert not never.evaluate_at_end(last_evaluated=-1)


def test_saves_by_steps_and_by_minutes_but_not_at_the_last_step() -> None:
    by_steps = schedule(total=30, checkpoints={"saveSteps": 10})
    assert [n for n in range(1, 31) if by_steps.save(n, minutes_since_save=0)] == [10, 20]
    assert not by_steps.clock_based
    by_time = schedule(total=30, checkpoints={"saveSteps": None, "saveMinutes": 5})
    assert by_time.clock_based
    assert not by_time.save(7, minutes_since_save=4.9)
    assert by_time.save(7, minutes_since_save=5.0)
    assert not by_time.save(30, minutes_since_save=60)  # the final checkpoint is always taken
