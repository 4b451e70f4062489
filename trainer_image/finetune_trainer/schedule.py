"""When the loop logs, evaluates and saves: a pure function of the step and the spec,
kept apart from the step itself, as the Hugging Face Trainer's callbacks are.

Every rank takes the same decisions from the same numbers; only the time-based save
(`saveMinutes`) depends on a clock, so rank 0's decision is broadcast for it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_api.types import CheckpointSpec, TrainingSpec


@dataclass(frozen=True)
class Schedule:
    training: TrainingSpec
    checkpoints: CheckpointSpec
    total_steps: int

    def log(self, step: int) -> bool:
        """A log line after this step (every loggingSteps, and the last step)."""
        return step % self.training.logging_steps == 0 or step == self.total_steps

    def evaluate(self, step: int, epoch_ended: bool) -> bool:
        """An evaluation after this step (evalStrategy steps or epoch); the final one
        after the last step is `evaluate_at_end`."""
        t = self.training
        if step >= self.total_steps:
            return False
        if t.eval_strategy == "steps":
            return t.eval_steps is not None and step % t.eval_steps == 0
        return t.eval_strategy == "epoch" and epoch_ended

    def evaluate_at_end(self, last_evaluated: int) -> bool:
        return self.training.eval_strategy != "no" and last_evaluated != self.total_steps

    def save(self, step: int, minutes_since_save: float) -> bool:
        """A checkpoint after this step (the final one is always taken)."""
        c = self.checkpoints
        if step >= self.total_steps:
            return False
        if c.save_steps and step % c.save_steps == 0:
            return True
        return bool(c.save_minutes and minutes_since_save >= c.save_minutes)

    @property
    def clock_based(self) -> bool:
        """Whether save() reads a clock (ranks must then agree through rank 0)."""
        return bool(self.checkpoints.save_minutes)
