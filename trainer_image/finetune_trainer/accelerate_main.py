"""`accelerate launch`, as the trainer's launcher runs it.

A training process that fails has recorded its reason (errors.record_failure) and
the launcher prints it once. accelerate's own report of that failure, a traceback of
its launcher (one process) or torch elastic's error table (several), says nothing
more, so it is left out here: only the exit status passes on. Any other error of
accelerate itself keeps its traceback.
"""

from __future__ import annotations

import subprocess
import sys


def main() -> int:
    from accelerate.commands.launch import main as launch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        launch()
    except subprocess.CalledProcessError as e:
        return e.returncode if e.returncode > 0 else 1
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values() if f.exitcode > 0]
        return codes[0] if codes else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
