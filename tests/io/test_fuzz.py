"""Fuzzing the public readers with mutated real files, 1,000 cases per format (DICOM image,
DICOM series, WFDB, DICOM waveform ECG, NIfTI, NIfTI-gz, TIFF/WSI, JPEG, PNG; the cases
are in fuzz_formats.py).

Each format runs in a worker subprocess (fuzz_worker.py) under a 4 GiB address-space limit
and a 5 s wall-clock limit per case, two formats' workers at a time; a worker that dies is
restarted after the case that killed it. The line every case must hold: the reader returns a valid result (finite arrays
of the shape the mutated file's own header declares) or raises a MedmmInputError naming
the file; never another exception, a crash, a timeout or a MemoryError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.io.fuzz_formats import FORMATS
from tests.io.fuzz_worker import WALL_LIMIT_S

REPO = Path(__file__).resolve().parents[2]
N_CASES = 1000
GOOD = ("valid", "refused")


def _fuzz(fmt: str, cases: int, workdir: Path) -> tuple[Counter, list[str], float]:
    """Run cases 0..cases-1 in workers; -> (tally of outcomes, failure lines, max wall s)."""
    tally: Counter = Counter()
    failures: list[str] = []
    max_wall, first = 0.0, 0
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    while first < cases:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.io.fuzz_worker", fmt, str(first), str(cases), str(workdir)],
            cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=cases * (WALL_LIMIT_S + 3) + 120,
        )
        started = None
        for line in proc.stdout.splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
                continue
            started = None
            tally[record["outcome"]] += 1
            max_wall = max(max_wall, record["wall"])
            if record["outcome"] not in GOOD:
                failures.append(f"case {record['case']}: {record['outcome']}: {record['detail']}")
            first = record["case"] + 1
        if proc.returncode != 0 or started is not None:
            if started is None:  # died before its first case: nothing to restart after
                raise AssertionError(f"{fmt} worker failed to start:\n{proc.stderr[-2000:]}")
            kind = "timeout" if "Timeout (" in proc.stderr else "crash"
            tally[kind] += 1
            failures.append(f"case {started}: {kind} (worker exit {proc.returncode}): {proc.stderr[-300:]}")
            first = started + 1
    return tally, failures, max_wall


# slowest first (14, 15, 10, 6, 7, 8, 6, 7, 7 s of one core per 1,000 cases), so two workers at a time finish
# together
_ORDER = ("DICOM waveform ECG", "DICOM series", "DICOM image", "WFDB", "TIFF/WSI", "NIfTI", "JPEG", "PNG", "NIfTI-gz")
PARALLEL_WORKERS = 2


@pytest.fixture(scope="module")
def fuzz_results(request, tmp_path_factory) -> dict[str, Future]:
    """Every format the pytest run selected, run two workers at a time (each format's cases stay
    in one worker, in order): -> format -> future of (tally, failures, max wall s, wall s)."""
    selected = {item.callspec.params["fmt"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_fuzz"}

    def run(fmt: str):
        wall0 = time.perf_counter()
        return (*_fuzz(fmt, N_CASES, tmp_path_factory.mktemp("fuzz")), time.perf_counter() - wall0)

    pool = ThreadPoolExecutor(PARALLEL_WORKERS)
    futures = {fmt: pool.submit(run, fmt) for fmt in sorted(selected, key=lambda f: (_ORDER + (f,)).index(f))}
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fuzz(fmt, fuzz_results):
    tally, failures, max_wall, seconds = fuzz_results[fmt].result()
    print(f"\n{fmt}: {N_CASES} cases, {tally['refused']} refused with medmm errors, {tally['valid']} read as valid, "
          f"{tally['exception'] + tally['crash'] + tally['unnamed']} crashes, {tally['timeout']} timeouts, "
          f"{tally['memory']} memory blow-ups, {tally['invalid']} invalid results; max case {max_wall:.2f} s; "
          f"{seconds:.1f} s in its worker")
    assert not failures, f"{len(failures)} {fmt} cases broke the line:\n" + "\n".join(failures[:15])
    assert sum(tally.values()) == N_CASES
    # the mutations must exercise both sides of the line
    assert tally["refused"] >= N_CASES // 10 and tally["valid"] >= N_CASES // 50, dict(tally)
