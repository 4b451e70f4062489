"""What `ftctl describe` prints of a job's status (no cluster)."""

from __future__ import annotations

from finetune_api.types import FineTuneJob
from finetune_operator.views import describe


def job(**status: object) -> FineTuneJob:
    return FineTuneJob.from_wire(
        {
            "metadata": {"name": "mrpc", "namespace": "ml"},
            "spec": {
                "model": {"uri": "s3://models/bert"},
                "dataset": {"uri": "s3://data/mrpc/", "textColumns": ["a", "b"]},
                "checkpoints": {"uri": "s3://ckpt/mrpc"},
            },
            "status": status,
        }
    )


def test_describe_says_when_a_restarting_job_comes_back() -> None:
    waiting = job(
        phase="Restarting", attempt=3, restartCount=2, nextAttemptTime="2026-11-26T03:10:40Z"
    )
    text = describe(waiting, [])
    assert "Attempt:      3 (restarts: 2, backoffLimit: 3)" in text
    assert "Next attempt: 2026-11-26T03:10:40Z (backoff)" in text
    assert "Next attempt" not in describe(job(phase="Running", attempt=3), [])
