"""ftctl's checks before sending: every job the apiserver rejects (the table of
test_crd_validation) is rejected on the client too, naming the same field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from finetune_operator import jobfile

from .test_crd_validation import INVALID, valid_job

SERVER_FRAMING = {"Required value", "Unsupported value"}


def test_the_valid_job_passes() -> None:
    jobfile.validate(valid_job())


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_what_the_server_rejects_the_client_rejects_first(
    mutate: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    job = copy.deepcopy(valid_job())
    job["spec"]["dataset"]["evalSplit"] = "validation"  # as the server-side test sends it
    mutate(job)
    with pytest.raises(jobfile.JobFileError) as rejected:
        jobfile.validate(job)
    message = str(rejected.value).replace("'", '"')
    # The field and the rule's own words; the apiserver's framing ("Required value",
    # "Unsupported value") is its own.
    for text in expected:
        if text not in SERVER_FRAMING:
            assert text in message, message
