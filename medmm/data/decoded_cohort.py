"""Decode a cohort once into compact arrays, skip-and-count bad files, cache on disk.

Decoding DICOM / WFDB and preprocessing dominate the data cost, while augmentation is
cheap, so each study is decoded once (in parallel processes) into one contiguous array
per modality and the result is saved next to the cohort, keyed by the manifest hash and
the preprocessing settings. Workers forked later share these arrays copy-on-write
instead of each holding a copy.

The cache records each study's file stamps (size and modification time of every file its
manifest entries cover). On load, a study whose stamps differ is read again, after its
files are checked against the sha256 the manifest recorded at ingest: a file whose
content changed is a bad file (skipped and counted, or raised under ``strict``).
Unchanged studies come from the cache. ``strict`` also verifies every file's sha256
before anything is decoded or loaded, which catches a change that kept size and time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmm.cohort.manifest import Manifest, entry_sha256, hashed_files, resolve_under
from medmm.console import progress
from medmm.data.ecg_transforms import preprocess_ecg
from medmm.io.dicom import read_dicom
from medmm.io.ecg import read_ecg
from medmm.io.errors import MedmmInputError
from medmm.io.findings import FINDINGS
from medmm.io.raster import raster_format, read_raster
from medmm.io.reports import parse_report, read_report

log = logging.getLogger(__name__)
CACHE_VERSION = 4
MODALITIES = ("xray", "ecg", "report")
# The file a study is read by: its X-ray, or in a cohort without X-rays (MIMIC-IV-ECG,
# PTB-XL) its ECG. A study without it is skipped; the other modalities may be missing.
ANCHORS = ("xray", "ecg")
CHANGED_AFTER_INGEST = "content differs from the sha256 the manifest recorded at ingest (the file changed since)"


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


def anchor_modality(modalities: Iterable[str]) -> str | None:
    """The modality every study is read by (:data:`ANCHORS`): X-ray where the cohort has any,
    else ECG; None where it has neither."""
    has = set(modalities)
    return next((anchor for anchor in ANCHORS if anchor in has), None)


def normalise_radiograph(pixels: np.ndarray) -> np.ndarray:
    """Robust [0, 1] scaling (0.5 / 99.5 percentiles): exposure and bit depth differ
    between devices, the anatomy's relative contrast does not."""
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    return np.clip((pixels - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def load_xray_input(path: str | Path, image_size: int) -> np.ndarray:
    """A radiograph file (DICOM, or JPEG / PNG as MIMIC-CXR-JPG and CheXpert ship them; told
    apart by content) -> the model's input before augmentation: [1, S, S] float32 in [0, 1].
    The one place this preprocessing lives (training cache and the served model use it)."""
    import torch
    import torch.nn.functional as F

    image = read_raster(path).pixels if raster_format(path) else read_dicom(path).pixels
    if image.ndim != 2:
        raise MedmmInputError(path, f"expected a single-frame radiograph, got shape {image.shape}")
    image = torch.from_numpy(normalise_radiograph(image.astype(np.float32)))[None, None]
    return F.interpolate(image, size=(image_size, image_size), mode="area")[0].numpy()


def load_ecg_input(path: str | Path, ecg_fs: int) -> np.ndarray:
    """An ECG file (WFDB or DICOM waveform) -> the model's input: [12, ecg_fs * 10] float32."""

    record = read_ecg(path)
    return preprocess_ecg(record.signal, record.fs, target_fs=ecg_fs)


def _decode_study(args: tuple[dict, str, int, int, str]) -> tuple[dict | None, dict | None]:
    row, root, image_size, ecg_fs, anchor = args

    has = {m: isinstance(row.get(m), str) and bool(row.get(m)) for m in MODALITIES}
    current = None
    try:
        current = row.get(anchor)
        if not has[anchor]:
            raise MedmmInputError(row["study_id"], f"the study has no {anchor} (every study of this cohort "
                                                   "needs one)")
        # A missing modality other than the anchor (no manifest row) is not an error: the
        # study keeps a placeholder and a presence flag of False.
        image = np.zeros((1, image_size, image_size), np.float32)
        if has["xray"]:
            current = row["xray"]
            image = load_xray_input(resolve_under(root, current), image_size)
        ecg = np.zeros((12, ecg_fs * 10), np.float32)
        if has["ecg"]:
            current = row["ecg"]
            ecg = load_ecg_input(resolve_under(root, current), ecg_fs)
        text, labels = "", np.full(len(FINDINGS), -1, np.int8)
        if has["report"]:
            current = row["report"]
            held = row.get("report_text")
            report = parse_report(held) if isinstance(held, str) else read_report(resolve_under(root, current))
            text, labels = report.text, report.labels.as_vector().astype(np.int8)
    except (MedmmInputError, OSError) as exc:
        problem = exc.problem if isinstance(exc, MedmmInputError) else (exc.strerror or type(exc).__name__)
        return None, {"study_id": row["study_id"], "path": current, "problem": problem,
                      "category": type(exc).__name__}
    return {
        "study_id": row["study_id"],
        "split": row["split"],
        "xray": image.astype(np.float16),
        "ecg": ecg.astype(np.float16),
        "text": text,
        "labels": labels,
        **{f"present_{m}": has[m] for m in MODALITIES},
    }, None


def _cache_key(manifest: Manifest, image_size: int, ecg_fs: int) -> str:
    spec = json.dumps({"v": CACHE_VERSION, "m": manifest.content_hash(), "s": image_size, "fs": ecg_fs})
    return hashlib.sha256(spec.encode()).hexdigest()[:20]


def files_stamp(files: Iterable[Path]) -> str:
    """Name, size and modification time of each file: a change to any of them (short of
    one that restores both size and time) changes the stamp."""
    parts = []
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            parts.append(f"{f.name}:missing")
            continue
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def _entries(row: dict) -> list[str]:
    """The manifest paths (relative to the cohort root) of a study's decoded files. A
    modality held as text in the manifest (``<modality>_text``) is not read from its file."""
    return [row[m] for m in MODALITIES if isinstance(row.get(m), str) and row[m]
            and not isinstance(row.get(f"{m}_text"), str)]


def _study_stamp(root: Path, row: dict) -> str:
    # A plain join, not resolve_under: stat-ing is harmless, resolving costs most of the
    # check, and the decoder resolves (and refuses escaping paths) before reading.
    return "|".join(files_stamp(hashed_files(root / rel)) for rel in _entries(row))


def _content_problem(root: Path, relative: str, expected: str) -> str | None:
    """Why the entry's files do not match the manifest's sha256 (None when they do)."""
    try:
        actual = entry_sha256(resolve_under(root, relative))
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None if actual == expected else CHANGED_AFTER_INGEST


def _changed_entries(manifest: Manifest, rows: list[dict], workers: int) -> list[dict]:
    """Skip records ({study_id, path, problem}) of the studies whose first changed file
    no longer matches the manifest, in study order. Hashing is I/O and hashlib releases
    the GIL, so threads overlap it."""
    expected = dict(zip(manifest.table["path"], manifest.table["sha256"]))
    pairs = [(row["study_id"], rel) for row in rows for rel in _entries(row)]
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        problems = list(pool.map(lambda pair: _content_problem(manifest.root, pair[1], expected[pair[1]]), pairs))
    bad: dict[str, dict] = {}
    for (study_id, rel), problem in zip(pairs, problems):
        if problem is not None and study_id not in bad:
            bad[study_id] = {"study_id": study_id, "path": rel, "problem": problem}
    return list(bad.values())


def _decode(jobs: list[tuple], workers: int) -> list[tuple[dict | None, dict | None]]:
    if workers > 1 and len(jobs) > 32:
        with mp.get_context("fork").Pool(workers) as pool:
            # imap keeps the studies' order, and lets the bar advance as chunks come back
            return list(progress(pool.imap(_decode_study, jobs, chunksize=32), "decode studies", total=len(jobs)))
    return [_decode_study(j) for j in progress(jobs, "decode studies")]


def _cached_record(cache: DecodedCohort, i: int) -> dict:
    return {"study_id": cache.study_ids[i], "split": cache.splits[i], "xray": cache.xray[i], "ecg": cache.ecg[i],
            "text": cache.report_text[i], "labels": cache.labels[i],
            **{f"present_{m}": bool(cache.present[m][i]) for m in MODALITIES}}


def _load_cache(path: Path) -> tuple[DecodedCohort, dict[str, str]]:
    """The cached cohort and the file stamps of its studies (good and skipped)."""
    with np.load(path, allow_pickle=False) as z:
        cohort = DecodedCohort(z["study_ids"], z["splits"], z["xray"], z["ecg"], z["report_text"], z["labels"],
                               json.loads(str(z["skipped"])), {m: z[f"present_{m}"] for m in MODALITIES})
        return cohort, json.loads(str(z["stamps"]))


def _save_cache(path: Path, cohort: DecodedCohort, stamps: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, study_ids=cohort.study_ids, splits=cohort.splits, xray=cohort.xray, ecg=cohort.ecg,
             report_text=cohort.report_text, labels=cohort.labels, skipped=json.dumps(cohort.skipped),
             **{f"present_{m}": cohort.present[m] for m in MODALITIES}, stamps=json.dumps(stamps))
    tmp.replace(path)


def decode_cohort(manifest: Manifest, *, image_size: int, ecg_fs: int, strict: bool = False, workers: int = 2,
                  cache_dir: Path | None = None, limit: int | None = None) -> DecodedCohort:
    """Decode every study of the manifest, reusing the cached decoding of unchanged studies
    (module docstring).

    A study with a bad file is skipped and recorded in ``skipped`` (path relative to the
    cohort root, and the problem); with ``strict`` every file's sha256 is verified against
    the manifest first, and the first bad file raises instead.
    """
    studies = manifest.studies()
    if limit is not None:
        studies = studies.iloc[:limit]
    rows = studies.to_dict("records")
    mismatched = _changed_entries(manifest, rows, workers) if strict else []
    if mismatched:
        raise MedmmInputError(manifest.resolve(mismatched[0]["path"]), mismatched[0]["problem"])
    # stamped before reading, so that a change made while decoding shows on the next load
    stamps = {row["study_id"]: _study_stamp(manifest.root, row) for row in rows}
    cache_path = None
    cache, cached_stamps = None, {}
    if cache_dir is not None and limit is None:
        cache_path = Path(cache_dir) / f"decoded-{_cache_key(manifest, image_size, ecg_fs)}.npz"
        if cache_path.exists():
            cache, cached_stamps = _load_cache(cache_path)
    cached_index = {} if cache is None else {sid: i for i, sid in enumerate(cache.study_ids)}
    cached_skip = {} if cache is None else {s["study_id"]: s for s in cache.skipped}
    fresh = [row for row in rows if cached_stamps.get(row["study_id"]) == stamps[row["study_id"]]]
    stale = [row for row in rows if cached_stamps.get(row["study_id"]) != stamps[row["study_id"]]]
    if cache is not None and not stale:
        if strict and cache.skipped:
            raise MedmmInputError(manifest.resolve(cache.skipped[0]["path"]), cache.skipped[0]["problem"])
        return cache

    # A study the cache knew whose files changed is checked against the manifest first:
    # a changed content is a bad file, not new data.
    changed = _changed_entries(manifest, [r for r in stale if r["study_id"] in cached_stamps], workers)
    changed_ids = {s["study_id"] for s in changed}
    anchor = anchor_modality(manifest.table["modality"].dropna().unique())
    if anchor is None:
        raise MedmmInputError(manifest.root, f"the cohort has no {' or '.join(ANCHORS)} to read its studies by")
    jobs = [(row, str(manifest.root), image_size, ecg_fs, anchor) for row in stale
            if row["study_id"] not in changed_ids]
    results = _decode(jobs, workers)
    records = {r["study_id"]: r for r, _ in results if r is not None}
    records.update({row["study_id"]: _cached_record(cache, cached_index[row["study_id"]])
                    for row in fresh if row["study_id"] in cached_index})
    new_skips = changed + [s for _, s in results if s is not None]
    skips = {s["study_id"]: s for s in new_skips}
    skips.update({row["study_id"]: cached_skip[row["study_id"]] for row in fresh if row["study_id"] in cached_skip})
    skipped = [skips[row["study_id"]] for row in rows if row["study_id"] in skips]
    if strict and skipped:
        raise MedmmInputError(manifest.resolve(skipped[0]["path"]), skipped[0]["problem"])
    for s in new_skips:
        log.warning("skipped study %s: %s: %s", s["study_id"], s["path"], s["problem"])
    good = [records[row["study_id"]] for row in rows if row["study_id"] in records]
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
        present={m: np.array([r[f"present_{m}"] for r in good], bool) for m in MODALITIES},
    )
    if cache_path is not None:
        _save_cache(cache_path, cohort, stamps)
    return cohort
