"""Fuzzing the public readers with mutated real files, 1,000 cases per format (DICOM image,
DICOM series, WFDB, DICOM waveform ECG, NIfTI, NIfTI-gz, TIFF/WSI; the cases are in
fuzz_formats.py).

Each format runs in a worker subprocess (fuzz_worker.py) under a 4 GiB address-space limit
and a 5 s wall-clock limit per case; a worker that dies is restarted after the case that
killed it. The line every case must hold: the reader returns a valid result (finite arrays
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


# TIFF/WSI: 6 of 1,000 cases still break the line (5 damaged deflate tiles that OpenSlide
# decodes without complaint where tifffile refuses them or reads other pixels, and 1 IFD
# that makes OpenSlide's GLib abort on a 512 GB allocation while opening the file)
_OPEN = {"TIFF/WSI": pytest.mark.xfail(strict=True, reason="6 damaged TIFFs read or crash OpenSlide")}


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=_OPEN.get(f, ())) for f in FORMATS])
def test_fuzz(fmt, tmp_path):
    wall0 = time.perf_counter()
    tally, failures, max_wall = _fuzz(fmt, N_CASES, tmp_path)
    print(f"\n{fmt}: {N_CASES} cases, {tally['refused']} refused with medmm errors, {tally['valid']} read as valid, "
          f"{tally['exception'] + tally['crash'] + tally['unnamed']} crashes, {tally['timeout']} timeouts, "
          f"{tally['memory']} memory blow-ups, {tally['invalid']} invalid results; max case {max_wall:.2f} s; "
          f"{time.perf_counter() - wall0:.1f} s in all")
    assert not failures, f"{len(failures)} {fmt} cases broke the line:\n" + "\n".join(failures[:15])
    assert sum(tally.values()) == N_CASES
    # the mutations must exercise both sides of the line
    assert tally["refused"] >= N_CASES // 10 and tally["valid"] >= N_CASES // 50, dict(tally)
