"""Directory tree -> cohort manifest, by a cohort spec's file rules, tables and link rules,
out of core.

Streams the tree (``os.scandir``), claims files by the spec's globs, reads the new or
changed ones in worker processes in chunks (a bounded number in flight), reuses the hash
and ids of files whose path, size and mtime are unchanged since the last run (kept in a
sidecar ``<manifest>.files.parquet``), joins metadata tables, links modalities by the
spec's rules (a shared key, or the same patient nearest in time) and writes the manifest
with a stable patient-level split.

Everything left out is counted by category (:attr:`IngestStats.dropped`): unreadable
files by reason, files not selected by a header tag or table value, files no rule took,
rows without patient / study, items a key link found no study for, studies lacking a
required modality. The unreadable files are listed with their reason in
``<manifest>.unreadable.csv``. A spec that leaves nothing is an error that says what the
tree holds.

Why DuckDB: a manifest has one row per file, so any step that holds the rows as Python
or pandas objects grows the parent's memory with the tree (about 4 kB per file before).
Here the walk, the file records and every relational step (table joins, linking, the
required-modality filter, the sort) live in a DuckDB database on disk beside the
manifest, under a fixed memory limit past which DuckDB spills to disk; the parent only
ever holds one batch of rows. Values are parsed by the same Python functions as before
(ids, times, paths), fed in batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import resource
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from medmm.cohort.captions import caption_from_labels
from medmm.cohort.manifest import COHORT_NAME_KEY, file_sha256
from medmm.cohort.scan import (
    RECORD_FIELDS,
    CompiledRule,
    candidate_rules,
    cell_text,
    init_worker,
    inspect_batch,
    shown_value,
    strip_ext,
)
from medmm.cohort.spec import CohortSpec, TableSpec
from medmm.cohort.splits import stable_patient_split
from medmm.console import progress
from medmm.io.errors import MedmmInputError

log = logging.getLogger("medmm.ingest")
MANIFEST_COLUMNS = ("patient_id", "study_id", "series_id", "modality", "path", "row_key", "time", "sha256",
                    "linked_from", "text", "split")
MEMORY_LIMIT = "64MB"    # DuckDB's buffer: past it, tables, joins and sorts spill to disk
ROWS_PER_BATCH = 4096    # rows the parent holds at once (walk entries, records, table rows)

_RECORD_TYPES = {**{c: "VARCHAR" for c in RECORD_FIELDS}, "size": "BIGINT", "mtime_ns": "BIGINT", "rule": "INTEGER"}


DROP_CATEGORIES = ("unreadable", "not selected", "not claimed", "no patient/study", "unlinked",
                   "lacking a required modality")


@dataclass
class IngestStats:
    n_files_under_root: int = 0    # regular files under the root (hidden ones and the outputs aside)
    n_files_seen: int = 0          # of those, files that some rule's glob matched
    n_files_read: int = 0          # of those, opened in this run (new or changed)
    n_files_reused: int = 0        # unchanged since the last run: hash and ids reused
    n_problems: int = 0            # matched a rule but unreadable (see ``problems``, the sidecar's 'problem')
    n_unidentified: int = 0        # readable but without patient / study after tables and links
    n_items_from_tables: int = 0
    n_links: int = 0
    n_dropped_studies: int = 0     # lacking a required modality
    n_rows: int = 0
    n_patients: int = 0
    n_studies: int = 0
    seconds: float = 0.0
    peak_rss_parent_kb: int = 0
    peak_rss_worker_kb: int = 0
    problems: dict[str, int] = field(default_factory=dict)   # unreadable files by reason
    # what was left out, by category (DROP_CATEGORIES) and reason; files, except
    # "lacking a required modality", which counts studies by the modality they lack
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    files_by_extension: dict[str, int] = field(default_factory=dict)
    files_per_rule: list[int] = field(default_factory=list)  # glob matches of each file rule, in order

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def drop(self, category: str, counts: dict[str, int]) -> None:
        merged = Counter(self.dropped.get(category, {}))
        merged.update({k: int(v) for k, v in counts.items() if v})
        if merged:
            self.dropped[category] = dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self, spec: CohortSpec | None = None) -> str:
        """Counts only, never an identifier or a path: what was found, linked and dropped, and why."""
        lines = [f"  files: {self.n_files_under_root} under the root, {self.n_files_seen} matched a rule "
                 f"(read {self.n_files_read}, unchanged {self.n_files_reused}); table items "
                 f"{self.n_items_from_tables}; links made {self.n_links}"]
        parts = []
        for category in DROP_CATEGORIES:
            counts = self.dropped.get(category)
            if counts:
                detail = ", ".join(f"{k} {v}" for k, v in counts.items())
                if category == "lacking a required modality":  # studies; one may lack several
                    parts.append(f"studies {category} {self.n_dropped_studies} ({detail})")
                else:
                    parts.append(f"{category} {sum(counts.values())} ({detail})")
        lines.append("  dropped: " + ("; ".join(parts) if parts else "nothing"))
        if spec is not None:
            idle = [f"{_rule_name(r)}" for r, n in zip(spec.files, self.files_per_rule) if n == 0]
            if idle and self.n_files_seen:
                lines.append(f"  rules that matched no file: {', '.join(idle)}")
        return "\n".join(lines)


def _rule_name(rule) -> str:
    modality = rule.modality if isinstance(rule.modality, str) else "/".join(dict.fromkeys(rule.modality.values()))
    return f"{modality} {rule.pattern!r}"


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".files.parquet")


def unreadable_path(out: Path) -> Path:
    """The list of unreadable files (path relative to the root, reason, problem) beside the manifest."""
    return out.with_name(out.name.removesuffix(".parquet") + ".unreadable.csv")


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


def extension_of(rel: str) -> str:
    """A file's extension for the summary ('.dcm', '.csv.gz'); names such as DICOM UIDs
    ('1.2.840.5') or none count as '(none)', so the tally stays small."""
    name = rel.rsplit("/", 1)[-1].lower()
    parts = name.split(".")[1:]
    if parts and parts[-1] in ("gz", "bz2", "xz", "zip") and len(parts) >= 2:
        ext = "." + ".".join(parts[-2:])
    else:
        ext = "." + parts[-1] if parts else ""
    return ext if re.fullmatch(r"(\.[a-z][a-z0-9]{0,5}){1,2}", ext) else "(none)"


def rules_fingerprint(spec: CohortSpec) -> str:
    """Changes when the file rules change (then no cached record is trusted)."""
    payload = json.dumps([r.model_dump(mode="json") for r in spec.files], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- values


def _clean_id(value) -> str | None:
    """Identifiers as text: '15709.0' (a float column) -> '15709'; '' -> None."""
    s = cell_text(value)
    if s is None:
        return None
    return s[:-2] if re.fullmatch(r"\d+\.0", s) else s


def _iso(value) -> str | None:
    """A time as ISO text: anything pandas parses, or DICOM's date and time joined
    ('21800506 213428.0', a time column read as a number losing its leading zeros)."""
    if value is None or str(value).strip() in ("", "nan", "NaT"):
        return None
    text = str(value).strip()
    m = re.fullmatch(r"(\d{8})[ T]?(\d{1,6})?(?:\.\d*)?", text)
    if m:
        text = m.group(1) + (m.group(2) or "0").zfill(6)
        try:
            return pd.Timestamp(pd.to_datetime(text, format="%Y%m%d%H%M%S")).isoformat()
        except (ValueError, TypeError):
            return None
    try:
        return pd.Timestamp(text).isoformat()
    except (ValueError, TypeError):
        return None


def _patient_of(value, pattern: str | None, group: str = "patient") -> str | None:
    """The ``group`` of ``pattern`` found in ``value`` (the value itself without a pattern)."""
    if value is None or not pattern:
        return value
    m = re.search(pattern, value)
    return m.group(group) if m else None


# ----------------------------------------------------------------------------- the database

_ITEM_COLUMNS = ["seq", "patient_id", "study_id", "series_id", "modality", "path", "row_key", "time", "sha256",
                 "accession", "study_uid", "text"]


class _Store:
    """The DuckDB database of one ingest run (a temporary folder beside the manifest)."""

    def __init__(self, out: Path, memory_limit: str):
        if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory_limit):
            raise ValueError(f"memory limit {memory_limit!r}: give a size such as '128MB' or '2GB'")
        self.folder = Path(tempfile.mkdtemp(prefix=".ingest-", dir=out.parent))
        self.con = duckdb.connect(str(self.folder / "ingest.duckdb"))
        self.con.execute(f"SET memory_limit = '{memory_limit}'")
        self.con.execute(f"SET temp_directory = {_sql_text(self.folder / 'spill')}")
        # Written rows stay in memory until a checkpoint moves them to the file: keep that small.
        self.con.execute("SET checkpoint_threshold = '4MB'")
        self.con.execute("CREATE TABLE walk (seq BIGINT, path VARCHAR, size BIGINT, mtime_ns BIGINT)")
        cols = ", ".join(f"{c} {_RECORD_TYPES[c]}" for c in RECORD_FIELDS)
        self.con.execute(f"CREATE TABLE files (seq BIGINT, path_key VARCHAR, {cols})")
        self.con.execute("CREATE TABLE items (seq BIGINT, patient_id VARCHAR, study_id VARCHAR, series_id VARCHAR, "
                         "modality VARCHAR, path VARCHAR, row_key VARCHAR, time VARCHAR, sha256 VARCHAR, "
                         "accession VARCHAR, study_uid VARCHAR, text VARCHAR)")

    def append(self, table: str, columns: list[str], rows: list[tuple]) -> None:
        if rows:
            self.con.append(table, pd.DataFrame.from_records(rows, columns=columns))

    def scalar(self, sql: str, params: list | dict | None = None):
        return self.con.execute(sql, params or []).fetchall()[0][0]

    def counts(self, sql: str, params: list | dict | None = None) -> dict[str, int]:
        """{reason: n} from a query of (reason, n) rows."""
        return {str(k): int(n) for k, n in self.con.execute(sql, params or []).fetchall()}

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class _Buffer:
    """Rows on their way into one table of the store, flushed every ROWS_PER_BATCH."""

    def __init__(self, store: _Store, table: str, columns: list[str]):
        self.store, self.table, self.columns, self.rows = store, table, columns, []

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROWS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        self.store.append(self.table, self.columns, self.rows)
        self.rows = []


# ----------------------------------------------------------------------------- scanning


def _load_cache(store: _Store, sidecar: Path, fingerprint: str) -> None:
    """The last run's records of readable files, as table ``cache`` (empty when the rules
    or the record's fields changed)."""
    cols = ", ".join(f"{c} {_RECORD_TYPES[c]}" for c in RECORD_FIELDS)
    store.con.execute(f"CREATE TABLE cache ({cols})")
    if not sidecar.exists() or not {"rules", *RECORD_FIELDS} <= set(pq.read_schema(sidecar).names):
        return
    store.con.execute(f"INSERT INTO cache SELECT {', '.join(RECORD_FIELDS)} FROM read_parquet(?) "
                      "WHERE rules = ? AND problem IS NULL", [str(sidecar), fingerprint])


def _walk(spec: CohortSpec, root: Path, store: _Store, rules: list[CompiledRule], skip: set[Path],
          stats: IngestStats) -> int:
    """Fill table ``walk`` with the files a rule's glob matches; tally every file by
    extension and per rule. Returns how many files would match one folder further down
    (the hint when nothing matched)."""
    table_paths = {PurePosixPath(t.path).as_posix() for t in spec.tables}
    walk = _Buffer(store, "walk", ["seq", "path", "size", "mtime_ns"])
    extensions: Counter[str] = Counter()
    per_rule = [0] * len(rules)
    one_down = 0
    for rel, size, mtime in progress(walk_tree(root, skip), "ingest: walk the tree"):
        stats.n_files_under_root += 1
        extensions[extension_of(rel)] += 1
        if rel in table_paths:
            continue
        matched = candidate_rules(rules, rel)
        if matched:
            for index in matched:
                per_rule[index] += 1
            walk.add((stats.n_files_seen, rel, size, mtime))
            stats.n_files_seen += 1
        elif "/" in rel and candidate_rules(rules, rel.split("/", 1)[1]):
            one_down += 1
    walk.flush()
    stats.files_by_extension = dict(extensions.most_common())
    stats.files_per_rule = per_rule
    return one_down


def _nothing_matched(spec: CohortSpec, root: Path, stats: IngestStats, one_down: int) -> MedmmInputError:
    """The error for a spec whose globs match no file of the tree, with what the tree holds."""
    if not stats.n_files_under_root:
        return MedmmInputError(root, "the data root holds no files: check --root (or the spec's root)")
    shown = list(stats.files_by_extension.items())
    kinds = ", ".join(f"{ext} {n}" for ext, n in shown[:8]) + (f", {len(shown) - 8} more kinds" if len(shown) > 8
                                                                else "")
    patterns = "; ".join(_rule_name(r) for r in spec.files) or "none (the spec has no file rules)"
    hint = (f"no file under the root matched any rule; the root holds {stats.n_files_under_root} files ({kinds}); "
            f"the rules' patterns: {patterns}; check 'pattern' (a glob relative to the root, '**' spans folders)")
    if one_down:
        hint += (f"; {one_down} files would match one folder further down: point the root at the folder the "
                 "patterns start from")
    return MedmmInputError(root, hint)


def scan_tree(spec: CohortSpec, root: Path, store: _Store, *, sidecar: Path, fingerprint: str, workers: int,
              chunk: int, skip: set[Path], stats: IngestStats) -> None:
    """Fill table ``files`` with every file a rule's glob matched (cached or read now).
    Raises MedmmInputError (with what the tree holds) when no file and no table item can
    make a row."""
    rules = [CompiledRule.from_spec(i, r) for i, r in enumerate(spec.files)]
    one_down = _walk(spec, root, store, rules, skip, stats)
    if not stats.n_files_seen and not any(t.modality for t in spec.tables):
        raise _nothing_matched(spec, root, stats, one_down)

    _load_cache(store, sidecar, fingerprint)
    # path_key: the path without extension, for joining tables that list files (by
    # scan.strip_ext itself, so SQL and Python agree).
    store.con.create_function("strip_ext", strip_ext, ["VARCHAR"], "VARCHAR")
    store.con.execute("INSERT INTO files SELECT w.seq, strip_ext(c.path), c.* FROM walk w JOIN cache c "
                      "ON c.path = w.path AND c.size = w.size AND c.mtime_ns = w.mtime_ns")
    store.con.execute("DROP TABLE cache")
    stats.n_files_reused = store.scalar("SELECT count(*) FROM files")
    # The files to read, in walk order, through a Parquet file so the parent streams them.
    to_read = store.folder / "to_read.parquet"
    store.con.execute(f"COPY (SELECT seq, path, size, mtime_ns FROM walk ANTI JOIN files USING (seq) ORDER BY seq) "
                      f"TO {_sql_text(to_read)} (FORMAT parquet, ROW_GROUP_SIZE {ROWS_PER_BATCH})")
    n_to_read = stats.n_files_seen - stats.n_files_reused

    def pending_batches() -> Iterator[tuple[list[int], list]]:
        for part in pq.ParquetFile(to_read).iter_batches(batch_size=chunk):
            rows = part.to_pydict()
            batch = [(rel, size, mtime, candidate_rules(rules, rel))
                     for rel, size, mtime in zip(rows["path"], rows["size"], rows["mtime_ns"])]
            yield rows["seq"], batch

    def read_batches() -> Iterator[tuple[list[int], tuple[list[tuple], int]]]:
        if workers <= 1:
            init_worker(rules)
            for seqs, batch in pending_batches():
                yield seqs, inspect_batch(str(root), batch)
            return
        # forkserver, not fork: the parent runs DuckDB's threads (forking a threaded process
        # can deadlock the child), and a forked child would inherit the parent's pages.
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(rules,)) as pool:
            in_flight = {}
            for seqs, batch in pending_batches():
                in_flight[pool.submit(inspect_batch, str(root), batch)] = seqs
                if len(in_flight) >= 2 * workers:  # bounded: the reading never runs far ahead
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield in_flight.pop(fut), fut.result()
            for fut, seqs in in_flight.items():
                yield seqs, fut.result()

    def read_records() -> Iterator[tuple[int, tuple]]:
        for seqs, (batch_records, worker_rss) in read_batches():
            stats.peak_rss_worker_kb = max(stats.peak_rss_worker_kb, worker_rss)
            yield from zip(seqs, batch_records)

    records = _Buffer(store, "files", ["seq", "path_key", *RECORD_FIELDS])
    for seq, rec in progress(read_records(), "ingest: read files", total=n_to_read):
        records.add((seq, strip_ext(rec[0]), *rec))
        stats.n_files_read += 1
    records.flush()
    log.info("ingest: %d files (%d unchanged, %d read)", stats.n_files_seen, stats.n_files_reused,
             stats.n_files_read)


# ----------------------------------------------------------------------------- tables


def _table_format(path: Path) -> str:
    """'parquet', 'tsv' or 'csv' by the name, a compression suffix aside (pandas reads
    .gz / .bz2 / .xz / .zip by the name)."""
    name = path.name.lower()
    for ext in (".gz", ".bz2", ".xz", ".zip"):
        name = name.removesuffix(ext)
    suffix = PurePosixPath(name).suffix
    return "parquet" if suffix == ".parquet" else "tsv" if suffix in (".tsv", ".tab") else "csv"


def _table_batches(path: Path, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    """A metadata table in batches of rows, values as text (as pandas reads them)."""
    kind = _table_format(path)
    if kind == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
            yield batch.to_pandas().astype(object).where(lambda f: f.notna(), None)
        return
    if columns:
        missing = sorted(set(columns) - set(_table_columns(path)))
        if missing:
            raise MedmmInputError(path, f"the spec names columns the table lacks: {missing}")
    yield from pd.read_csv(path, sep="\t" if kind == "tsv" else ",", usecols=columns, dtype=str,
                           keep_default_na=False, chunksize=ROWS_PER_BATCH)


def _table_columns(path: Path) -> list[str]:
    if _table_format(path) == "parquet":
        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, sep="\t" if _table_format(path) == "tsv" else ",", nrows=0).columns)


def _time_of(rec: dict, columns: list[str]) -> str | None:
    values = [str(rec[c]).strip() for c in columns if rec[c] is not None and str(rec[c]).strip()]
    return _iso(" ".join(values)) if values else None


def _not_selected(rec: dict, accepted: dict[str, set[str]]) -> str | None:
    for column, values in accepted.items():
        value = "" if rec[column] is None else str(rec[column]).strip()
        if value.lower() not in values:
            return f"not selected: {column}={shown_value(column, value)}"
    return None


# the column of ``claimed`` each join key of a mapping table matches
_JOIN_COLUMN = {"path": "path_key", "instance": "instance", "accession": "accession", "study_uid": "study_uid"}


def join_file_table(store: _Store, spec: TableSpec, root: Path) -> None:
    """A mapping table gives the files it lists (by path, instance, accession or study
    UID) their patient / study / time / keys where no ``ids`` group did, and drops those
    whose row its ``select`` rejects; for one file, the last row wins, and an earlier
    table wins over a later one."""
    key, times, accepted = spec.join_key, spec.time_columns(), spec.accepted()
    cols = list(dict.fromkeys(c for c in (spec.join_column, spec.patient_column, spec.study_column, *times,
                                          spec.accession_column, spec.study_uid_column, *accepted) if c))
    folder = PurePosixPath(spec.path).parent.as_posix()
    store.con.execute("CREATE OR REPLACE TABLE listed (seq BIGINT, k VARCHAR, patient VARCHAR, study VARCHAR, "
                      "time VARCHAR, accession VARCHAR, study_uid VARCHAR, excluded VARCHAR)")
    listed = _Buffer(store, "listed", ["seq", "k", "patient", "study", "time", "accession", "study_uid", "excluded"])
    lowered = {column: {v.strip().lower() for v in values} for column, values in accepted.items()}
    seq = 0
    for frame in _table_batches(root / spec.path, cols):
        for rec in frame.to_dict("records"):
            if key == "path":
                rel = str(rec[spec.path_column])
                if spec.path_prefix and rel.startswith(spec.path_prefix):
                    rel = rel[len(spec.path_prefix):]
                rel = rel.removeprefix("./")
                k = strip_ext(f"{folder}/{rel}" if folder != "." else rel)
            else:
                k = _clean_id(rec[spec.join_column])
            patient = _clean_id(rec[spec.patient_column]) if spec.patient_column else None
            listed.add((seq, k, _patient_of(patient, spec.patient_pattern),
                        _clean_id(rec[spec.study_column]) if spec.study_column else None, _time_of(rec, times),
                        _clean_id(rec[spec.accession_column]) if spec.accession_column else None,
                        _clean_id(rec[spec.study_uid_column]) if spec.study_uid_column else None,
                        _not_selected(rec, lowered)))
            seq += 1
    listed.flush()
    # A new table rather than an UPDATE: DuckDB keeps updated values in memory until a
    # checkpoint, a table written by a query spills.
    store.con.execute(f"""
        CREATE OR REPLACE TABLE claimed AS
        SELECT f.* REPLACE (coalesce(f.table_patient, j.patient) AS table_patient,
                            coalesce(f.table_study, j.study) AS table_study,
                            coalesce(f.table_time, j.time) AS table_time,
                            coalesce(f.accession, j.accession) AS accession,
                            coalesce(f.study_uid, j.study_uid) AS study_uid,
                            coalesce(f.excluded, j.excluded) AS excluded)
        FROM claimed f LEFT JOIN (SELECT * FROM listed
                                  QUALIFY row_number() OVER (PARTITION BY k ORDER BY seq DESC) = 1) j
        ON f.{_JOIN_COLUMN[key]} = j.k""")
    store.con.execute("DROP TABLE listed")


def _row_text(row: dict, spec: TableSpec, key: str) -> str | None:
    """A report table row's text: its text columns' non-blank cells, one per line, then the
    sentences of its finding labels (None for an item table that is not a report table)."""
    if not (spec.text_columns or spec.label_columns):
        return None
    lines = [text for text in (cell_text(row[c]) for c in spec.text_columns) if text]
    if spec.label_columns:
        try:
            lines.append(caption_from_labels({c: row[c] for c in spec.label_columns}, key, spec.caption_style))
        except ValueError as exc:
            raise MedmmInputError(spec.path, f"row {shown_value('key', key)}: {exc}") from None
    return "\n".join(line for line in lines if line)


def add_item_table(store: _Store, spec: TableSpec, root: Path, first_seq: int) -> tuple[int, dict[str, int]]:
    """A table whose rows (or columns) are items of a modality: one manifest row each.
    Returns the number of items and the rows skipped, by reason (not selected, no text)."""
    path = root / spec.path
    sha = file_sha256(path)
    rel = PurePosixPath(spec.path).as_posix()
    items = _Buffer(store, "items", _ITEM_COLUMNS)
    times = spec.time_columns()
    accepted = {c: {v.lower() for v in values} for c, values in spec.accepted().items()}
    skipped: Counter[str] = Counter()
    n = 0

    def add(key, patient, study, when, accession=None, study_uid=None, text=None) -> None:
        nonlocal n
        if key is None:
            return
        items.add((first_seq + n, _patient_of(patient, spec.patient_pattern),
                   _patient_of(study, spec.study_pattern, "study"), None, spec.modality, rel,
                   key, when, sha, accession, study_uid, text))
        n += 1

    if spec.orientation == "columns":  # genes x samples: the first column names the rows
        for key in _table_columns(path)[1:]:
            add(key, None if spec.study_column else key, None, None)
    else:
        key_col = spec.key_column or spec.patient_column
        cols = list(dict.fromkeys(c for c in (key_col, spec.patient_column, spec.study_column, *times,
                                              spec.accession_column, spec.study_uid_column, *accepted,
                                              *spec.text_columns, *spec.label_columns) if c))
        for frame in _table_batches(path, cols):
            for row in frame.to_dict("records"):
                key = _clean_id(row[key_col])
                reason = _not_selected(row, accepted)
                if reason:
                    skipped[reason.removeprefix("not selected: ")] += 1
                    continue
                text = _row_text(row, spec, str(key))
                if text is not None and not text:
                    skipped["no report text"] += 1
                    continue
                if spec.patient_column:
                    patient = _clean_id(row[spec.patient_column])
                else:  # a study-keyed table (demo labs) takes its patient from the files' studies, later
                    patient = None if (spec.study_column or spec.accession_column or spec.study_uid_column) else key
                add(key, patient, _clean_id(row[spec.study_column]) if spec.study_column else None,
                    _time_of(row, times),
                    _clean_id(row[spec.accession_column]) if spec.accession_column else None,
                    _clean_id(row[spec.study_uid_column]) if spec.study_uid_column else None, text)
    items.flush()
    return n, dict(skipped)


# ----------------------------------------------------------------------------- linking

_KEY_COLUMN = {"study": "study_id", "accession": "accession", "study_uid": "study_uid"}


def link_by_key(store: _Store, spec: CohortSpec, stats: IngestStats) -> None:
    """Link rules ``by`` a key, in order, on table ``identified``: an attach row whose key
    equals an anchor's (and whose patient, if it has one, is the anchor's) takes the
    anchor's patient and study, once per matching anchor study."""
    con = store.con
    for rule in (r for r in spec.links if r.by != "time"):
        key = _KEY_COLUMN[rule.by]
        params = {"anchor": rule.anchor, "attach": rule.attach}
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pairs AS
            WITH anchors AS (SELECT DISTINCT {key} AS k, patient_id, study_id FROM identified
                             WHERE modality = $anchor AND {key} IS NOT NULL AND patient_id IS NOT NULL)
            SELECT r.seq, a.patient_id, a.study_id FROM identified r JOIN anchors a
            ON r.{key} = a.k AND (r.patient_id IS NULL OR r.patient_id = a.patient_id)
            WHERE r.modality = $attach""", params)
        stats.n_links += store.scalar("SELECT count(*) FROM pairs")
        con.execute("""
            CREATE OR REPLACE TABLE identified AS
            SELECT * FROM identified WHERE modality <> $attach OR seq NOT IN (SELECT seq FROM pairs)
            UNION ALL
            SELECT DISTINCT i.* REPLACE (p.patient_id AS patient_id, p.study_id AS study_id)
            FROM identified i JOIN pairs p ON i.seq = p.seq WHERE i.modality = $attach""", {"attach": rule.attach})
        con.execute("DROP TABLE pairs")


def link_by_time(store: _Store, spec: CohortSpec, stats: IngestStats) -> None:
    """For each ``by: time`` rule, give every anchor study the attach item of the same
    patient nearest in time (within the window; any time when the window is null). The
    attached rows are copies under the anchor's study id, with ``linked_from`` = their own
    study. Every rule reads the table as it was before these links."""
    con = store.con
    con.execute("CREATE TABLE linked AS SELECT * FROM manifest LIMIT 0")
    for rule in (r for r in spec.links if r.by == "time"):
        window = "" if rule.within_hours is None else (
            f"WHERE gap <= {float(rule.within_hours) * 3600} "
            "QUALIFY row_number() OVER (PARTITION BY patient_id, study_id ORDER BY gap, study_att) = 1")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pairs AS
            WITH timed AS (SELECT *, try_cast(time AS TIMESTAMP) AS t FROM manifest),
            anchors AS (SELECT patient_id, study_id, min(t) AS t FROM timed WHERE modality = $anchor
                        GROUP BY patient_id, study_id),
            attach AS (SELECT patient_id, study_id AS study_att, min(t) AS t_att FROM timed
                       WHERE modality = $attach AND linked_from IS NULL GROUP BY patient_id, study_id),
            candidates AS (SELECT a.patient_id, a.study_id, b.study_att,
                                  abs(epoch(b.t_att) - epoch(a.t)) AS gap
                           FROM anchors a JOIN attach b ON a.patient_id = b.patient_id AND a.study_id <> b.study_att)
            SELECT patient_id, study_id, study_att FROM candidates {window}""",
                    {"anchor": rule.anchor, "attach": rule.attach})
        stats.n_links += store.scalar("SELECT count(*) FROM pairs")
        con.execute("""
            INSERT INTO linked SELECT m.* REPLACE (p.study_id AS study_id, p.study_att AS linked_from)
            FROM pairs p JOIN manifest m ON m.patient_id = p.patient_id AND m.study_id = p.study_att
            WHERE m.modality = $attach AND m.linked_from IS NULL""", {"attach": rule.attach})
    con.execute("INSERT INTO manifest SELECT * FROM linked")
    con.execute("DROP TABLE linked")


# ----------------------------------------------------------------------------- driver


def count_scan_drops(store: _Store, stats: IngestStats) -> None:
    """Unreadable, not selected and not claimed files of the scan, by reason."""
    stats.problems = store.counts("SELECT split_part(problem, ':', 1) AS reason, count(*) FROM files "
                                  "WHERE problem IS NOT NULL GROUP BY reason")
    stats.n_problems = sum(stats.problems.values())
    stats.drop("unreadable", stats.problems)
    for category in ("not selected", "not claimed"):
        stats.drop(category, store.counts(
            "SELECT substr(excluded, length($prefix) + 1) AS reason, count(*) FROM files "
            "WHERE starts_with(excluded, $prefix) GROUP BY reason", {"prefix": f"{category}: "}))


def build_manifest(store: _Store, spec: CohortSpec, root: Path, stats: IngestStats) -> str:
    """The manifest's rows from ``files`` and the spec's tables: ids from tables, items,
    orphan items given their study's patient, key links, per-patient placeholders, time
    links and the required-modality filter, counting what each step leaves out. Returns
    the name of the view that holds them (no split yet). Every step is a query that writes
    a table or a view (no UPDATE / DELETE, whose changes DuckDB keeps in memory), so it
    spills past the memory limit."""
    con = store.con
    con.execute("CREATE TABLE claimed AS SELECT *, NULL::VARCHAR AS table_patient, NULL::VARCHAR AS table_study, "
                "NULL::VARCHAR AS table_time FROM files WHERE rule >= 0 AND problem IS NULL")
    for tspec in spec.tables:
        if tspec.join_key is not None:
            join_file_table(store, tspec, root)
    stats.drop("not selected", store.counts(
        "SELECT substr(excluded, length('not selected: ') + 1), count(*) FROM claimed "
        "WHERE excluded IS NOT NULL GROUP BY 1"))
    n_files = store.scalar("SELECT coalesce(max(seq) + 1, 0) FROM files")
    for tspec in spec.tables:
        if tspec.modality:
            n_items, skipped = add_item_table(store, tspec, root, n_files + stats.n_items_from_tables)
            stats.n_items_from_tables += n_items
            stats.drop("not selected", {f"{tspec.modality} row {reason}": k for reason, k in skipped.items()})
    # Ids by precedence: the rule's ids groups, then a mapping table, then the header. An
    # item that names only its study (demo labs) belongs to that study's patient.
    con.execute("""
        CREATE TABLE identified AS
        WITH rows AS (
            SELECT seq, coalesce(patient_id, table_patient, header_patient) AS patient_id,
                   coalesce(study_id, table_study, study_uid) AS study_id,
                   coalesce(series_id, series_uid) AS series_id, modality, path, NULL::VARCHAR AS row_key,
                   coalesce(time, table_time) AS time, sha256, accession, study_uid, NULL::VARCHAR AS text
            FROM claimed WHERE excluded IS NULL
            UNION ALL SELECT seq, patient_id, study_id, series_id, modality, path, row_key, time, sha256, accession,
                             study_uid, text FROM items),
        owner AS (SELECT study_id, arg_min(patient_id, seq) AS patient_id FROM rows
                  WHERE study_id IS NOT NULL AND patient_id IS NOT NULL GROUP BY study_id)
        SELECT r.* REPLACE (coalesce(r.patient_id, o.patient_id) AS patient_id)
        FROM rows r LEFT JOIN owner o ON r.patient_id IS NULL AND r.study_id = o.study_id""")
    link_by_key(store, spec, stats)
    key_attached = sorted({r.attach for r in spec.links if r.by != "time"})
    orphans = store.counts("SELECT modality, count(*) FROM identified WHERE patient_id IS NULL GROUP BY modality")
    stats.drop("unlinked", {m: n for m, n in orphans.items() if m in key_attached})
    stats.drop("no patient/study", {m: n for m, n in orphans.items() if m not in key_attached})
    stats.n_unidentified = sum(orphans.values())
    # Items with no study of their own (per-patient tables) stand for the patient until linked.
    con.execute("""
        CREATE TABLE manifest AS
        SELECT * EXCLUDE (accession, study_uid)
                 REPLACE (coalesce(study_id, patient_id || '/' || modality) AS study_id,
                          coalesce(series_id, study_id, patient_id || '/' || modality) AS series_id),
               study_id IS NULL AS placeholder, NULL::VARCHAR AS linked_from
        FROM identified WHERE patient_id IS NOT NULL""")
    link_by_time(store, spec, stats)
    # A per-patient item that was linked to a real study no longer stands for itself.
    con.execute("""
        CREATE TABLE linked_placeholders AS
        SELECT study_id FROM manifest WHERE placeholder
        INTERSECT SELECT linked_from FROM manifest WHERE linked_from IS NOT NULL""")
    con.execute("""
        CREATE VIEW kept AS SELECT * FROM manifest
        WHERE linked_from IS NOT NULL OR study_id NOT IN (SELECT study_id FROM linked_placeholders)""")
    if not spec.required_modalities:
        return "kept"
    required = list(dict.fromkeys(spec.required_modalities))
    con.execute("""
        CREATE TABLE incomplete AS SELECT study_id FROM kept GROUP BY study_id
        HAVING count(DISTINCT modality) FILTER (WHERE list_contains($required, modality)) < $n""",
                {"required": required, "n": len(required)})
    stats.n_dropped_studies = store.scalar("SELECT count(*) FROM incomplete")
    stats.drop("lacking a required modality", {f"no {m}": store.scalar(
        "SELECT count(*) FROM (SELECT study_id FROM kept WHERE study_id IN (SELECT study_id FROM incomplete) "
        "GROUP BY study_id HAVING count(*) FILTER (WHERE modality = $m) = 0)", {"m": m}) for m in required})
    con.execute("CREATE VIEW complete AS SELECT * FROM kept WHERE study_id NOT IN (SELECT study_id FROM incomplete)")
    return "complete"


def ingest(spec: CohortSpec, root: str | Path, out: str | Path, *, workers: int = 2, chunk: int = 64,
           memory_limit: str = MEMORY_LIMIT) -> IngestStats:
    """Scan ``root`` by ``spec`` and write the manifest to ``out`` (Parquet), the file
    records to its sidecar and the unreadable files to :func:`unreadable_path`; returns
    the run's counts (read the manifest from ``out``). ``memory_limit`` caps the
    database's buffer (past it, DuckDB works on disk).

    Raises MedmmInputError naming the root when the spec matches no file of the tree or
    leaves no row (the message says what the tree holds and what was dropped), and
    FileNotFoundError when a table the spec names is missing."""
    start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = IngestStats()
    missing = [t.path for t in spec.tables if not (root / t.path).is_file()]
    if missing:
        raise FileNotFoundError(f"tables named by the spec are missing under {root}: {missing}")
    sidecar, unreadable = sidecar_path(out), unreadable_path(out)
    fingerprint = rules_fingerprint(spec)
    store = _Store(out, memory_limit)
    try:
        scan_tree(spec, root, store, sidecar=sidecar, fingerprint=fingerprint, workers=workers, chunk=chunk,
                  skip={out, sidecar, unreadable}, stats=stats)
        con = store.con
        _copy_atomic(con, f"SELECT {', '.join(RECORD_FIELDS)}, '{fingerprint}' AS rules FROM files ORDER BY seq",
                     sidecar)
        count_scan_drops(store, stats)
        if stats.n_problems:
            _copy_atomic(con, "SELECT path, split_part(problem, ':', 1) AS reason, problem FROM files "
                              "WHERE problem IS NOT NULL ORDER BY seq", unreadable, fmt="csv")
        else:
            unreadable.unlink(missing_ok=True)
        rows_view = build_manifest(store, spec, root, stats)
        if not store.scalar(f"SELECT count(*) FROM {rows_view}"):
            raise MedmmInputError(root, "the spec leaves no row for the manifest: " + " ".join(
                stats.summary().split()))
        fractions, seed = spec.split.as_tuple(), spec.split.seed
        con.create_function("patient_split", lambda pid: stable_patient_split([pid], fractions, seed)[pid],
                            ["VARCHAR"], "VARCHAR")
        columns = ", ".join("patient_split(patient_id) AS split" if c == "split" else c for c in MANIFEST_COLUMNS)
        order = ", ".join(f"{c} NULLS FIRST" for c in ("patient_id", "study_id", "modality", "path", "row_key"))
        _copy_atomic(con, f"SELECT {columns} FROM {rows_view} ORDER BY {order}", out,
                     metadata={COHORT_NAME_KEY: spec.name})
        stats.n_rows, stats.n_patients, stats.n_studies = con.execute(
            "SELECT count(*), count(DISTINCT patient_id), count(DISTINCT study_id) FROM read_parquet(?)",
            [str(out)]).fetchall()[0]
    finally:
        store.close()
    stats.seconds = time.perf_counter() - start
    stats.peak_rss_parent_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return stats


def _copy_atomic(con: duckdb.DuckDBPyConnection, query: str, target: Path, fmt: str = "parquet",
                 metadata: dict[str, str] | None = None) -> None:
    """Write a query's result to ``target`` (Parquet, with key-value ``metadata``, or CSV) so
    a reader never sees half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER"
    if metadata:
        pairs = ", ".join(f"{_sql_text(k)}: {_sql_text(v)}" for k, v in metadata.items())
        options += f", KV_METADATA {{{pairs}}}"
    con.execute(f"COPY ({query}) TO {_sql_text(tmp)} ({options})")
    os.replace(tmp, target)


def _sql_text(value: Path | str) -> str:
    """A path or text as an SQL string literal (COPY and SET take no parameters)."""
    return "'" + str(value).replace("'", "''") + "'"
