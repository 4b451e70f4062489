"""One training process, started by `accelerate launch` (see launch.py)."""

from __future__ import annotations

import logging
import os
import sys

from finetune_api.env import TrainerEnv
from finetune_api.exits import ExitCode

from .config import from_env
from .errors import (
    PermanentError,
    disk_full,
    record_failure,
    recorded_failure,
    termination_log,
)
from .stopping import GracefulStop
from .train import Run, configure_logging

log = logging.getLogger("finetune")


def main() -> int:
    rank = int(os.environ.get("RANK", "0"))
    configure_logging(rank)
    try:
        Run(from_env()).run()
    except GracefulStop as e:
        log.info("%s", e)
        return record_failure(e)
    except PermanentError as e:
        # One clear line, no traceback: the input is wrong, not the code. The launcher
        # prints the recorded reason once; a process started some other way says it here.
        if termination_log() is None:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return record_failure(e)
    except Exception as e:
        full = disk_full(e, TrainerEnv.read("work_dir"))
        if full is not None:
            log.error("%s", full)
            return record_failure(full)
        first = recorded_failure()
        if first is not None and first[0] == ExitCode.PERMANENT:
            # A process beside this one stopped on bad input, which ends this one too:
            # the launcher prints that reason; this failure is only its echo.
            log.info("stopping: another process of this node failed (%s)", type(e).__name__)
        else:
            log.exception("training failed")
        return record_failure(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
