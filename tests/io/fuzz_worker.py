"""Runs fuzz cases of one format in this process and reports each as a JSON line.

``python -m tests.io.fuzz_worker FORMAT FIRST STOP WORKDIR`` (from the repository root) runs cases FIRST..STOP-1 of
``fuzz_formats.FORMATS[FORMAT]`` under an address-space limit (RLIMIT_AS, 4 GiB) and a
per-case wall-clock limit. Before each case it prints ``{"start": i}``, after it
``{"case": i, "outcome": ...}``: a worker that dies (a crash in a C library, or the
watchdog ending a hang that Python could not interrupt) leaves a started case without an
outcome, and the driver (test_fuzz.py) records it and restarts the worker after it.

Outcomes: ``valid`` (read, and the result matches the file's own header), ``refused`` (a
medmm error naming the file), ``invalid`` (read, but the result is wrong), ``unnamed`` (a
medmm error without a file or a problem), ``exception`` (any other exception), ``memory``
(MemoryError under the cap), ``timeout`` (over the wall-clock limit).
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from medmm.io.errors import MedmmInputError
from medmm.io.guard import LIMIT_ENV
from tests.io.fuzz_formats import FORMATS

ADDRESS_SPACE_BYTES = 4 * 2**30
WALL_LIMIT_S = 5.0
DECODED_LIMIT_BYTES = 256 * 2**20  # medmm's own allocation guard, set low so refusals stay fast


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so a reader's ``except Exception`` cannot eat it."""


def _on_alarm(signum, frame):
    raise _Hang()


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(fmt: str, first: int, stop: int, workdir: Path) -> None:
    spec = FORMATS[fmt](workdir)
    signal.signal(signal.SIGALRM, _on_alarm)
    for i in range(first, stop):
        read = spec.make_case(i, np.random.default_rng([spec.seed, i]))
        _emit({"start": i})
        # a hang inside C code never returns to Python: the watchdog ends the process
        faulthandler.dump_traceback_later(WALL_LIMIT_S + 2, exit=True)
        wall0 = time.perf_counter()
        outcome, detail, result = "valid", "", None
        signal.setitimer(signal.ITIMER_REAL, WALL_LIMIT_S)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = read()
        except MedmmInputError as exc:
            outcome = "refused" if exc.path and exc.problem else "unnamed"
            detail = str(exc)[:200]
        except _Hang:
            outcome = "timeout"
        except MemoryError:
            outcome = "memory"
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz hunts for
            outcome, detail = "exception", f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
        wall = time.perf_counter() - wall0
        if outcome == "valid":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                problem = spec.check(i, result)
            if problem:
                outcome, detail = "invalid", problem
        if wall > WALL_LIMIT_S and outcome != "timeout":
            outcome, detail = "timeout", f"{wall:.2f} s ({outcome})"
        _emit({"case": i, "outcome": outcome, "detail": detail, "wall": round(wall, 4)})


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    os.environ[LIMIT_ENV] = str(DECODED_LIMIT_BYTES)
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
