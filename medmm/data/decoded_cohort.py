"""Decode a cohort once into compact arrays, skip-and-count bad files, cache on disk.

Decoding DICOM / WFDB and preprocessing dominate the data cost, while augmentation is
cheap, so each study is decoded once (in parallel processes) into one contiguous array
per modality and the result is saved next to the cohort, keyed by the manifest hash and
the preprocessing settings. Workers forked later share these arrays copy-on-write
instead of each holding a copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmm.cohort.manifest import Manifest, resolve_under
from medmm.data.ecg_transforms import preprocess_ecg
from medmm.io.dicom import read_dicom
from medmm.io.ecg import read_ecg
from medmm.io.errors import MedmmInputError
from medmm.io.findings import FINDINGS
from medmm.io.reports import read_report

log = logging.getLogger(__name__)
CACHE_VERSION = 2


@dataclass
class DecodedCohort:
    study_ids: np.ndarray  # [N] str
    splits: np.ndarray  # [N] str
    xray: np.ndarray  # [N, 1, S, S] float16 in [0, 1]
    ecg: np.ndarray  # [N, 12, T] float16, preprocessed
    report_text: np.ndarray  # [N] str (FINDINGS + IMPRESSION)
    labels: np.ndarray  # [N, F] int8, from the report labeler; -1 where the report is missing
    skipped: list[dict] = field(default_factory=list)  # {"path": relative path, "problem": str}
    present: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> [N] bool (absent key: all present)

    def __len__(self) -> int:
        return len(self.study_ids)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)


def normalise_radiograph(pixels: np.ndarray) -> np.ndarray:
    """Robust [0, 1] scaling (0.5 / 99.5 percentiles): exposure and bit depth differ
    between devices, the anatomy's relative contrast does not."""
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    return np.clip((pixels - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def load_xray_input(path: str | Path, image_size: int) -> np.ndarray:
    """A radiograph file -> the model's input before augmentation: [1, S, S] float32 in [0, 1].
    The one place this preprocessing lives (training cache and the served model use it)."""
    import torch
    import torch.nn.functional as F

    image = read_dicom(path).pixels
    if image.ndim != 2:
        raise MedmmInputError(path, f"expected a single-frame radiograph, got shape {image.shape}")
    image = torch.from_numpy(normalise_radiograph(image.astype(np.float32)))[None, None]
    return F.interpolate(image, size=(image_size, image_size), mode="area")[0].numpy()


def load_ecg_input(path: str | Path, ecg_fs: int) -> np.ndarray:
    """An ECG file (WFDB or DICOM waveform) -> the model's input: [12, ecg_fs * 10] float32."""

    record = read_ecg(path)
    return preprocess_ecg(record.signal, record.fs, target_fs=ecg_fs)


def _decode_study(args: tuple[dict, str, int, int]) -> tuple[dict | None, dict | None]:
    row, root, image_size, ecg_fs = args

    has = {m: isinstance(row.get(m), str) and bool(row.get(m)) for m in ("xray", "ecg", "report")}
    current = None
    try:
        current = row.get("xray")
        if not has["xray"]:
            raise MedmmInputError(row["study_id"], "the study has no X-ray (every study needs one)")
        image = load_xray_input(resolve_under(root, current), image_size)
        # A missing ECG or report (no manifest row) is not an error: the study keeps a
        # placeholder and a presence flag of False.
        ecg = np.zeros((12, ecg_fs * 10), np.float32)
        if has["ecg"]:
            current = row["ecg"]
            ecg = load_ecg_input(resolve_under(root, current), ecg_fs)
        text, labels = "", np.full(len(FINDINGS), -1, np.int8)
        if has["report"]:
            current = row["report"]
            report = read_report(resolve_under(root, current))
            text, labels = report.text, report.labels.as_vector().astype(np.int8)
    except (MedmmInputError, OSError) as exc:
        problem = exc.problem if isinstance(exc, MedmmInputError) else (exc.strerror or type(exc).__name__)
        return None, {"study_id": row["study_id"], "path": current, "problem": problem}
    return {
        "study_id": row["study_id"],
        "split": row["split"],
        "xray": image.astype(np.float16),
        "ecg": ecg.astype(np.float16),
        "text": text,
        "labels": labels,
        "present_ecg": has["ecg"],
        "present_report": has["report"],
    }, None


def _cache_key(manifest: Manifest, image_size: int, ecg_fs: int) -> str:
    spec = json.dumps({"v": CACHE_VERSION, "m": manifest.content_hash(), "s": image_size, "fs": ecg_fs})
    return hashlib.sha256(spec.encode()).hexdigest()[:20]


def decode_cohort(manifest: Manifest, *, image_size: int, ecg_fs: int, strict: bool = False, workers: int = 2,
                  cache_dir: Path | None = None, limit: int | None = None) -> DecodedCohort:
    """Decode every study of the manifest (or load the cached result).

    A study with a bad file is skipped and recorded in ``skipped`` (path relative to the
    cohort root, and the problem); with ``strict`` the first bad file raises instead.
    """
    cache_path = None
    if cache_dir is not None and limit is None:
        cache_path = Path(cache_dir) / f"decoded-{_cache_key(manifest, image_size, ecg_fs)}.npz"
        if cache_path.exists():
            with np.load(cache_path, allow_pickle=False) as z:
                skipped = json.loads(str(z["skipped"]))
                if strict and skipped:
                    raise MedmmInputError(skipped[0]["path"], skipped[0]["problem"])
                return DecodedCohort(z["study_ids"], z["splits"], z["xray"], z["ecg"], z["report_text"],
                                     z["labels"], skipped, {"ecg": z["present_ecg"], "report": z["present_report"]})
    studies = manifest.studies()
    if limit is not None:
        studies = studies.iloc[:limit]
    jobs = [(row, str(manifest.root), image_size, ecg_fs) for row in studies.to_dict("records")]
    if workers > 1 and len(jobs) > 32:
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(_decode_study, jobs, chunksize=32)
    else:
        results = [_decode_study(j) for j in jobs]
    good = [r for r, _ in results if r is not None]
    skipped = [s for _, s in results if s is not None]
    if strict and skipped:
        raise MedmmInputError(manifest.resolve(skipped[0]["path"]), skipped[0]["problem"])
    for s in skipped:
        log.warning("skipped study %s: %s: %s", s["study_id"], s["path"], s["problem"])
    if not good:
        raise MedmmInputError(manifest.root, "no study of the cohort could be read")
    cohort = DecodedCohort(
        study_ids=np.array([r["study_id"] for r in good]),
        splits=np.array([r["split"] for r in good]),
        xray=np.stack([r["xray"] for r in good]),
        ecg=np.stack([r["ecg"] for r in good]),
        report_text=np.array([r["text"] for r in good]),
        labels=np.stack([r["labels"] for r in good]),
        skipped=skipped,
        present={m: np.array([r[f"present_{m}"] for r in good], bool) for m in ("ecg", "report")},
    )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp.npz")
        np.savez(tmp, study_ids=cohort.study_ids, splits=cohort.splits, xray=cohort.xray, ecg=cohort.ecg,
                 report_text=cohort.report_text, labels=cohort.labels, skipped=json.dumps(skipped),
                 present_ecg=cohort.present["ecg"], present_report=cohort.present["report"])
        tmp.replace(cache_path)
    return cohort
