"""Directory tree -> cohort manifest, by a cohort spec's file rules, tables and link rules.

Streams the tree (``os.scandir``), claims files by the spec's globs, reads the new or
changed ones in worker processes in chunks (a bounded number in flight, so memory does
not grow with the tree beyond one small tuple per file), reuses the hash and ids of
files whose path, size and mtime are unchanged since the last run (kept in a sidecar
``<manifest>.files.parquet``), joins metadata tables, links modalities of a patient by
the spec's rules and writes the manifest with a stable patient-level split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from medmm.cohort.manifest import file_sha256
from medmm.cohort.scan import RECORD_FIELDS, CompiledRule, candidate_rules, init_worker, inspect_batch
from medmm.cohort.spec import CohortSpec, TableSpec
from medmm.cohort.splits import stable_patient_split

log = logging.getLogger("medmm.ingest")
MANIFEST_COLUMNS = ("patient_id", "study_id", "series_id", "modality", "path", "row_key", "time", "sha256",
                    "linked_from", "split")


@dataclass
class IngestStats:
    n_files_seen: int = 0          # files under the root that some rule's glob matched
    n_files_read: int = 0          # of those, opened in this run (new or changed)
    n_files_reused: int = 0        # unchanged since the last run: hash and ids reused
    n_problems: int = 0            # matched a rule but unreadable (see the sidecar's 'problem')
    n_unidentified: int = 0        # readable but without patient / study after tables
    n_items_from_tables: int = 0
    n_links: int = 0
    n_dropped_studies: int = 0     # lacking a required modality
    n_rows: int = 0
    n_patients: int = 0
    n_studies: int = 0
    seconds: float = 0.0
    peak_rss_parent_kb: int = 0
    peak_rss_worker_kb: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".files.parquet")


def walk_tree(root: Path, skip: set[Path]) -> Iterator[tuple[str, int, int]]:
    """(relative posix path, size, mtime_ns) of every regular file; hidden folders and
    files (caches, ``.git``) and the ingest's own outputs are skipped. Sorted per folder
    so a run is reproducible."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list a folder (%s); skipped", type(exc).__name__)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            elif entry.is_file(follow_symlinks=False) and Path(entry.path) not in skip:
                st = entry.stat(follow_symlinks=False)
                yield Path(entry.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns
        stack.extend(reversed(subfolders))


def rules_fingerprint(spec: CohortSpec) -> str:
    """Changes when the file rules change (then no cached record is trusted)."""
    payload = json.dumps([r.model_dump(mode="json") for r in spec.files], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_cache(path: Path, fingerprint: str) -> dict[str, tuple]:
    if not path.exists():
        return {}
    table = pd.read_parquet(path)
    if "rules" not in table.columns or table.empty or table["rules"].iloc[0] != fingerprint:
        return {}
    table = table[table["problem"].isna()]  # unreadable files are retried
    return {rec[0]: rec for rec in table[list(RECORD_FIELDS)].itertuples(index=False, name=None)}


def scan_tree(spec: CohortSpec, root: Path, cache: dict[str, tuple], *, workers: int, chunk: int,
              skip: set[Path], stats: IngestStats, progress_every: int = 1000) -> list[tuple]:
    """Every file a rule's glob matched, as RECORD_FIELDS tuples (cached or read now)."""
    rules = [CompiledRule.from_spec(i, r) for i, r in enumerate(spec.files)]
    table_paths = {PurePosixPath(t.path).as_posix() for t in spec.tables}
    records: list[tuple] = []
    start, last_report = time.perf_counter(), 0

    def report(final: bool = False) -> None:
        nonlocal last_report
        done = stats.n_files_read + stats.n_files_reused
        if final or done - last_report >= progress_every:
            last_report = done
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"ingest: {done} files ({stats.n_files_reused} unchanged, {stats.n_files_read} read) "
                  f"{rate:.0f} files/s", file=sys.stderr, flush=True)

    def take(result: tuple[list[tuple], int]) -> None:
        batch_records, worker_rss = result
        records.extend(batch_records)
        stats.n_files_read += len(batch_records)
        stats.peak_rss_worker_kb = max(stats.peak_rss_worker_kb, worker_rss)
        report()

    def pending_batches() -> Iterator[list]:
        batch = []
        for rel, size, mtime in walk_tree(root, skip):
            if rel in table_paths:
                continue
            cands = candidate_rules(rules, rel)
            if not cands:
                continue
            stats.n_files_seen += 1
            cached = cache.get(rel)
            if cached is not None and cached[1] == size and cached[2] == mtime:
                records.append(cached)
                stats.n_files_reused += 1
                continue
            batch.append((rel, size, mtime, cands))
            if len(batch) >= chunk:
                yield batch
                batch = []
        if batch:
            yield batch

    if workers <= 1:
        init_worker(rules)
        for batch in pending_batches():
            take(inspect_batch(str(root), batch))
    else:
        with ProcessPoolExecutor(workers, initializer=init_worker, initargs=(rules,)) as pool:
            in_flight = set()
            for batch in pending_batches():
                in_flight.add(pool.submit(inspect_batch, str(root), batch))
                if len(in_flight) >= 2 * workers:  # bounded: the walk never runs far ahead
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        take(fut.result())
            for fut in in_flight:
                take(fut.result())
    report(final=True)
    return records


# ----------------------------------------------------------------------------- tables


def _read_table(path: Path, columns: list[str] | None = None, header_only: bool = False) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path, columns=columns).head(0) if header_only else pd.read_parquet(path, columns=columns)
    sep = "\t" if suffix in (".tsv", ".tab") else ","
    return pd.read_csv(path, sep=sep, usecols=columns, nrows=0 if header_only else None, dtype=str,
                       keep_default_na=False)


def _clean_id(value) -> str | None:
    """Identifiers as text: '15709.0' (a float column) -> '15709'; '' -> None."""
    s = str(value).strip()
    if not s or s.lower() == "nan":
        return None
    return s[:-2] if re.fullmatch(r"\d+\.0", s) else s


def _strip_ext(rel: str) -> str:
    for ext in (".nii.gz", ".tar.gz"):
        if rel.endswith(ext):
            return rel[: -len(ext)]
    return str(PurePosixPath(rel).with_suffix(""))


def _iso(value) -> str | None:
    if value is None or str(value).strip() in ("", "nan", "NaT"):
        return None
    try:
        return pd.Timestamp(str(value)).isoformat()
    except (ValueError, TypeError):
        return None


def file_table_join(spec: TableSpec, root: Path) -> dict[str, tuple]:
    """Table that lists files (paths relative to the table's folder): path without
    extension -> (patient, study, time)."""
    cols = [c for c in (spec.path_column, spec.patient_column, spec.study_column, spec.time_column) if c]
    table = _read_table(root / spec.path, columns=list(dict.fromkeys(cols)))
    folder = PurePosixPath(spec.path).parent.as_posix()
    join = {}
    for rec in table.to_dict("records"):
        rel = str(rec[spec.path_column])
        if spec.path_prefix and rel.startswith(spec.path_prefix):
            rel = rel[len(spec.path_prefix):]
        patient = _clean_id(rec[spec.patient_column]) if spec.patient_column else None
        if patient and spec.patient_pattern:
            m = re.search(spec.patient_pattern, patient)
            patient = m.group("patient") if m else None
        rel = rel.removeprefix("./")
        if folder != ".":  # paths in a table are relative to the table's own folder
            rel = f"{folder}/{rel}"
        join[_strip_ext(rel)] = (
            patient, _clean_id(rec[spec.study_column]) if spec.study_column else None,
            _iso(rec[spec.time_column]) if spec.time_column else None)
    return join


def item_table_rows(spec: TableSpec, root: Path) -> list[dict]:
    """Table whose rows (or columns) are items of a modality: one manifest row each."""
    path = root / spec.path
    sha = file_sha256(path)
    rel = PurePosixPath(spec.path).as_posix()
    if spec.orientation == "columns":  # genes x samples: the first column names the rows
        rows = [(key, {}) for key in list(_read_table(path, header_only=True).columns)[1:]]
    else:
        key_col = spec.key_column or spec.patient_column
        cols = list(dict.fromkeys(c for c in (key_col, spec.patient_column, spec.study_column, spec.time_column) if c))
        rows = [(_clean_id(r[key_col]), r) for r in _read_table(path, columns=cols).to_dict("records")]
    items = []
    for key, row in rows:
        if key is None:
            continue
        if spec.patient_column and row:
            patient = _clean_id(row[spec.patient_column])
        else:  # a study-keyed table (demo labs) takes its patient from the files' studies, later
            patient = None if spec.study_column else key
        if spec.patient_pattern and patient is not None:
            m = re.search(spec.patient_pattern, patient)
            patient = m.group("patient") if m else None
        items.append({"patient_id": patient, "modality": spec.modality, "path": rel, "row_key": key,
                      "study_id": _clean_id(row[spec.study_column]) if spec.study_column and row else None,
                      "time": _iso(row[spec.time_column]) if spec.time_column and row else None,
                      "sha256": sha, "series_id": None})
    return items


# ----------------------------------------------------------------------------- linking


def link_modalities(table: pd.DataFrame, spec: CohortSpec, stats: IngestStats) -> pd.DataFrame:
    """For each link rule, give every anchor study the attach item of the same patient
    nearest in time (within the window; any time when the window is null). The attached
    rows are copies under the anchor's study id, with ``linked_from`` = their own study."""
    added = []
    times = pd.to_datetime(table["time"], errors="coerce")
    for rule in spec.links:
        is_anchor = table["modality"] == rule.anchor
        anchors = (table[is_anchor].assign(_t=times[is_anchor]).groupby(["patient_id", "study_id"], as_index=False)
                   ["_t"].min())
        is_attach = (table["modality"] == rule.attach) & table["linked_from"].isna()
        attach = table[is_attach].assign(_t=times[is_attach])
        if anchors.empty or attach.empty:
            continue
        attach_studies = attach.groupby(["patient_id", "study_id"], as_index=False)["_t"].min()
        pairs = anchors.merge(attach_studies, on="patient_id", suffixes=("", "_att"))
        pairs = pairs[pairs["study_id"] != pairs["study_id_att"]]
        if rule.within_hours is not None:
            gap = (pairs["_t_att"] - pairs["_t"]).abs()
            pairs = pairs.assign(_gap=gap)[gap <= pd.Timedelta(hours=rule.within_hours)]
            pairs = pairs.sort_values("_gap").drop_duplicates(["patient_id", "study_id"])
        if pairs.empty:
            continue
        rows = pairs[["patient_id", "study_id", "study_id_att"]].merge(
            attach.drop(columns=["_t"]).rename(columns={"study_id": "study_id_att"}), on=["patient_id", "study_id_att"])
        rows = rows.assign(linked_from=rows["study_id_att"]).drop(columns=["study_id_att"])
        stats.n_links += len(pairs)
        added.append(rows)
    if added:
        table = pd.concat([table, *added], ignore_index=True)
    return table


# ----------------------------------------------------------------------------- driver


def ingest(spec: CohortSpec, root: str | Path, out: str | Path, *, workers: int = 2, chunk: int = 64,
           progress_every: int = 1000) -> tuple[pd.DataFrame, IngestStats]:
    """Scan ``root`` by ``spec`` and write the manifest to ``out`` (Parquet); returns it."""
    start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = IngestStats()
    missing = [t.path for t in spec.tables if not (root / t.path).is_file()]
    if missing:
        raise FileNotFoundError(f"tables named by the spec are missing under {root}: {missing}")
    sidecar = sidecar_path(out)
    fingerprint = rules_fingerprint(spec)
    cache = load_cache(sidecar, fingerprint)
    records = scan_tree(spec, root, cache, workers=workers, chunk=chunk, skip={out, sidecar}, stats=stats,
                        progress_every=progress_every)
    del cache
    files = pd.DataFrame.from_records(records, columns=list(RECORD_FIELDS))
    del records
    files.assign(rules=fingerprint).to_parquet(sidecar, index=False)

    problems = files["problem"].notna()
    stats.n_problems = int(problems.sum())
    stats.problems = {k: int(v) for k, v in files.loc[problems, "problem"].str.split(":").str[0].value_counts().items()}
    claimed = files[(files["rule"] >= 0) & ~problems].drop(columns=["size", "mtime_ns", "rule", "problem"])

    for tspec in spec.tables:
        if tspec.path_column is None:
            continue
        join = file_table_join(tspec, root)
        keys = claimed["path"].map(_strip_ext)
        found = keys.map(join)
        hit = found.notna()
        for i, col in enumerate(("patient_id", "study_id", "time")):
            vals = found[hit].map(lambda t, i=i: t[i])
            claimed.loc[hit, col] = claimed.loc[hit, col].where(claimed.loc[hit, col].notna(), vals)
    items = [row for t in spec.tables if t.modality for row in item_table_rows(t, root)]
    stats.n_items_from_tables = len(items)
    table = claimed.assign(row_key=None)
    if items:
        table = pd.concat([table, pd.DataFrame(items)], ignore_index=True)
    owner = claimed.dropna(subset=["study_id", "patient_id"]).drop_duplicates("study_id").set_index("study_id")
    orphan = table["patient_id"].isna() & table["study_id"].notna()
    table.loc[orphan, "patient_id"] = table.loc[orphan, "study_id"].map(owner["patient_id"])
    unidentified = table["patient_id"].isna()
    stats.n_unidentified = int(unidentified.sum())
    table = table[~unidentified].copy()
    # Items with no study of their own (per-patient tables) stand for the patient until linked.
    no_study = table["study_id"].isna()
    table.loc[no_study, "study_id"] = table.loc[no_study, "patient_id"] + "/" + table.loc[no_study, "modality"]
    table["series_id"] = table["series_id"].where(table["series_id"].notna(), table["study_id"])
    table["linked_from"] = None
    placeholders = set(table.loc[no_study, "study_id"])
    table = link_modalities(table, spec, stats)
    # A per-patient item that was linked to a real study no longer stands for itself.
    linked_placeholders = placeholders & set(table["linked_from"].dropna())
    table = table[~(table["study_id"].isin(linked_placeholders) & table["linked_from"].isna())]

    if spec.required_modalities:
        have = table.groupby("study_id")["modality"].agg(set)
        keep = have[have.map(lambda s: set(spec.required_modalities) <= s)].index
        stats.n_dropped_studies = int(len(have) - len(keep))
        table = table[table["study_id"].isin(keep)]

    split_of = stable_patient_split(table["patient_id"].unique(), spec.split.as_tuple(), spec.split.seed)
    table = table.assign(split=table["patient_id"].map(split_of))
    table = table[list(MANIFEST_COLUMNS)].sort_values(["patient_id", "study_id", "modality", "path", "row_key"],
                                                       na_position="first").reset_index(drop=True)
    table.to_parquet(out, index=False)
    stats.n_rows, stats.n_patients, stats.n_studies = len(table), table["patient_id"].nunique(), table["study_id"].nunique()
    stats.seconds = time.perf_counter() - start
    stats.peak_rss_parent_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return table, stats
