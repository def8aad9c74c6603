"""Directory tree -> cohort manifest, by a cohort spec's file rules, tables and link rules,
out of core.

Streams the tree (``os.scandir``), claims files by the spec's globs, reads the new or
changed ones in worker processes in chunks (a bounded number in flight), reuses the hash
and ids of files whose path, size and mtime are unchanged since the last run (kept in a
sidecar ``<manifest>.files.parquet``), joins metadata tables, links modalities of a
patient by the spec's rules and writes the manifest with a stable patient-level split.

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
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from medmm.cohort.manifest import file_sha256
from medmm.cohort.scan import RECORD_FIELDS, CompiledRule, candidate_rules, init_worker, inspect_batch
from medmm.cohort.spec import CohortSpec, TableSpec
from medmm.cohort.splits import stable_patient_split

log = logging.getLogger("medmm.ingest")
MANIFEST_COLUMNS = ("patient_id", "study_id", "series_id", "modality", "path", "row_key", "time", "sha256",
                    "linked_from", "split")
MEMORY_LIMIT = "64MB"    # DuckDB's buffer: past it, tables, joins and sorts spill to disk
ROWS_PER_BATCH = 4096    # rows the parent holds at once (walk entries, records, table rows)

_RECORD_TYPES = {"path": "VARCHAR", "size": "BIGINT", "mtime_ns": "BIGINT", "rule": "INTEGER",
                 "modality": "VARCHAR", "patient_id": "VARCHAR", "study_id": "VARCHAR", "series_id": "VARCHAR",
                 "time": "VARCHAR", "sha256": "VARCHAR", "problem": "VARCHAR"}


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


# ----------------------------------------------------------------------------- values


def _clean_id(value) -> str | None:
    """Identifiers as text: '15709.0' (a float column) -> '15709'; '' -> None."""
    if value is None:
        return None
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


def _patient_of(value, pattern: str | None) -> str | None:
    if value is None or not pattern:
        return value
    m = re.search(pattern, value)
    return m.group("patient") if m else None


# ----------------------------------------------------------------------------- the database


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
                         "modality VARCHAR, path VARCHAR, row_key VARCHAR, time VARCHAR, sha256 VARCHAR)")

    def append(self, table: str, columns: list[str], rows: list[tuple]) -> None:
        if rows:
            self.con.append(table, pd.DataFrame.from_records(rows, columns=columns))

    def scalar(self, sql: str, params: list | None = None):
        return self.con.execute(sql, params or []).fetchall()[0][0]

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
    """The last run's readable records, as table ``cache`` (empty when the rules changed)."""
    cols = ", ".join(f"{c} {_RECORD_TYPES[c]}" for c in RECORD_FIELDS)
    store.con.execute(f"CREATE TABLE cache ({cols})")
    if not sidecar.exists() or "rules" not in pq.read_schema(sidecar).names:
        return
    store.con.execute(f"INSERT INTO cache SELECT {', '.join(RECORD_FIELDS)} FROM read_parquet(?) "
                      "WHERE rules = ? AND problem IS NULL", [str(sidecar), fingerprint])


def scan_tree(spec: CohortSpec, root: Path, store: _Store, *, sidecar: Path, fingerprint: str, workers: int,
              chunk: int, skip: set[Path], stats: IngestStats, progress_every: int = 1000) -> None:
    """Fill table ``files`` with every file a rule's glob matched (cached or read now)."""
    rules = [CompiledRule.from_spec(i, r) for i, r in enumerate(spec.files)]
    table_paths = {PurePosixPath(t.path).as_posix() for t in spec.tables}
    walk = _Buffer(store, "walk", ["seq", "path", "size", "mtime_ns"])
    for rel, size, mtime in walk_tree(root, skip):
        if rel not in table_paths and candidate_rules(rules, rel):
            walk.add((stats.n_files_seen, rel, size, mtime))
            stats.n_files_seen += 1
    walk.flush()

    _load_cache(store, sidecar, fingerprint)
    # path_key: the path without extension, for joining tables that list files (by
    # _strip_ext itself, so SQL and Python agree).
    store.con.create_function("strip_ext", _strip_ext, ["VARCHAR"], "VARCHAR")
    store.con.execute("INSERT INTO files SELECT w.seq, strip_ext(c.path), c.* FROM walk w JOIN cache c "
                      "ON c.path = w.path AND c.size = w.size AND c.mtime_ns = w.mtime_ns")
    store.con.execute("DROP TABLE cache")
    stats.n_files_reused = store.scalar("SELECT count(*) FROM files")
    # The files to read, in walk order, through a Parquet file so the parent streams them.
    to_read = store.folder / "to_read.parquet"
    store.con.execute(f"COPY (SELECT seq, path, size, mtime_ns FROM walk ANTI JOIN files USING (seq) ORDER BY seq) "
                      f"TO {_sql_text(to_read)} (FORMAT parquet, ROW_GROUP_SIZE {ROWS_PER_BATCH})")

    start, last_report = time.perf_counter(), 0
    records = _Buffer(store, "files", ["seq", "path_key", *RECORD_FIELDS])

    def report(final: bool = False) -> None:
        nonlocal last_report
        done = stats.n_files_read + stats.n_files_reused
        if final or done - last_report >= progress_every:
            last_report = done
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"ingest: {done} files ({stats.n_files_reused} unchanged, {stats.n_files_read} read) "
                  f"{rate:.0f} files/s", file=sys.stderr, flush=True)

    def take(result: tuple[list[tuple], int], seqs: list[int]) -> None:
        batch_records, worker_rss = result
        for seq, rec in zip(seqs, batch_records):
            records.add((seq, _strip_ext(rec[0]), *rec))
        stats.n_files_read += len(batch_records)
        stats.peak_rss_worker_kb = max(stats.peak_rss_worker_kb, worker_rss)
        report()

    def pending_batches() -> Iterator[tuple[list[int], list]]:
        for part in pq.ParquetFile(to_read).iter_batches(batch_size=chunk):
            rows = part.to_pydict()
            batch = [(rel, size, mtime, candidate_rules(rules, rel))
                     for rel, size, mtime in zip(rows["path"], rows["size"], rows["mtime_ns"])]
            yield rows["seq"], batch

    if workers <= 1:
        init_worker(rules)
        for seqs, batch in pending_batches():
            take(inspect_batch(str(root), batch), seqs)
    else:
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
                        take(fut.result(), in_flight.pop(fut))
            for fut, seqs in in_flight.items():
                take(fut.result(), seqs)
    records.flush()
    report(final=True)


# ----------------------------------------------------------------------------- tables


def _table_batches(path: Path, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    """A metadata table in batches of rows, values as text (as pandas reads them)."""
    if path.suffix.lower() == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
            yield batch.to_pandas().astype(object).where(lambda f: f.notna(), None)
        return
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    yield from pd.read_csv(path, sep=sep, usecols=columns, dtype=str, keep_default_na=False,
                           chunksize=ROWS_PER_BATCH)


def _table_columns(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        return list(pq.read_schema(path).names)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    return list(pd.read_csv(path, sep=sep, nrows=0).columns)


def join_file_table(store: _Store, spec: TableSpec, root: Path) -> None:
    """A table that lists files (paths relative to the table's folder) gives the files
    their patient / study / time where the file itself did not; the last row wins."""
    cols = list(dict.fromkeys(c for c in (spec.path_column, spec.patient_column, spec.study_column,
                                          spec.time_column) if c))
    folder = PurePosixPath(spec.path).parent.as_posix()
    store.con.execute("CREATE OR REPLACE TABLE listed (seq BIGINT, path_key VARCHAR, patient VARCHAR, "
                      "study VARCHAR, time VARCHAR)")
    listed = _Buffer(store, "listed", ["seq", "path_key", "patient", "study", "time"])
    seq = 0
    for frame in _table_batches(root / spec.path, cols):
        for rec in frame.to_dict("records"):
            rel = str(rec[spec.path_column])
            if spec.path_prefix and rel.startswith(spec.path_prefix):
                rel = rel[len(spec.path_prefix):]
            rel = rel.removeprefix("./")
            if folder != ".":
                rel = f"{folder}/{rel}"
            patient = _clean_id(rec[spec.patient_column]) if spec.patient_column else None
            listed.add((seq, _strip_ext(rel), _patient_of(patient, spec.patient_pattern),
                        _clean_id(rec[spec.study_column]) if spec.study_column else None,
                        _iso(rec[spec.time_column]) if spec.time_column else None))
            seq += 1
    listed.flush()
    # A new table rather than an UPDATE: DuckDB keeps updated values in memory until a
    # checkpoint, a table written by a query spills.
    store.con.execute("""
        CREATE OR REPLACE TABLE claimed AS
        SELECT f.* REPLACE (coalesce(f.patient_id, j.patient) AS patient_id, coalesce(f.study_id, j.study) AS study_id,
                            coalesce(f.time, j.time) AS time)
        FROM claimed f LEFT JOIN (SELECT * FROM listed
                                  QUALIFY row_number() OVER (PARTITION BY path_key ORDER BY seq DESC) = 1) j
        ON f.path_key = j.path_key""")
    store.con.execute("DROP TABLE listed")


def add_item_table(store: _Store, spec: TableSpec, root: Path, first_seq: int) -> int:
    """A table whose rows (or columns) are items of a modality: one manifest row each.
    Returns the number of items."""
    path = root / spec.path
    sha = file_sha256(path)
    rel = PurePosixPath(spec.path).as_posix()
    items = _Buffer(store, "items", ["seq", "patient_id", "study_id", "series_id", "modality", "path", "row_key",
                                     "time", "sha256"])
    n = 0

    def add(key, patient, study, when) -> None:
        nonlocal n
        if key is None:
            return
        items.add((first_seq + n, _patient_of(patient, spec.patient_pattern), study, None, spec.modality, rel,
                   key, when, sha))
        n += 1

    if spec.orientation == "columns":  # genes x samples: the first column names the rows
        for key in _table_columns(path)[1:]:
            add(key, None if spec.study_column else key, None, None)
    else:
        key_col = spec.key_column or spec.patient_column
        cols = list(dict.fromkeys(c for c in (key_col, spec.patient_column, spec.study_column, spec.time_column) if c))
        for frame in _table_batches(path, cols):
            for row in frame.to_dict("records"):
                key = _clean_id(row[key_col])
                if spec.patient_column:
                    patient = _clean_id(row[spec.patient_column])
                else:  # a study-keyed table (demo labs) takes its patient from the files' studies, later
                    patient = None if spec.study_column else key
                add(key, patient, _clean_id(row[spec.study_column]) if spec.study_column else None,
                    _iso(row[spec.time_column]) if spec.time_column else None)
    items.flush()
    return n


# ----------------------------------------------------------------------------- linking


def link_modalities(store: _Store, spec: CohortSpec, stats: IngestStats) -> None:
    """For each link rule, give every anchor study the attach item of the same patient
    nearest in time (within the window; any time when the window is null). The attached
    rows are copies under the anchor's study id, with ``linked_from`` = their own study.
    Every rule reads the table as it was before linking."""
    con = store.con
    con.execute("CREATE TABLE linked AS SELECT * FROM manifest LIMIT 0")
    for rule in spec.links:
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


def build_manifest(store: _Store, spec: CohortSpec, root: Path, stats: IngestStats) -> str:
    """The manifest's rows from ``files`` and the spec's tables: ids from tables, items,
    orphan items given their study's patient, per-patient placeholders, links and the
    required-modality filter. Returns the name of the view that holds them (no split yet).
    Every step is a query that writes a table or a view (no UPDATE / DELETE, whose
    changes DuckDB keeps in memory), so it spills past the memory limit."""
    con = store.con
    con.execute("CREATE TABLE claimed AS SELECT * FROM files WHERE rule >= 0 AND problem IS NULL")
    for tspec in spec.tables:
        if tspec.path_column is not None:
            join_file_table(store, tspec, root)
    n_files = store.scalar("SELECT coalesce(max(seq) + 1, 0) FROM files")
    for tspec in spec.tables:
        if tspec.modality:
            stats.n_items_from_tables += add_item_table(store, tspec, root, n_files + stats.n_items_from_tables)
    # An item that names only its study (demo labs) belongs to that study's patient; items
    # with no study of their own (per-patient tables) stand for the patient until linked.
    con.execute("""
        CREATE TABLE manifest AS
        WITH rows AS (
            SELECT seq, patient_id, study_id, series_id, modality, path, NULL::VARCHAR AS row_key, time, sha256
            FROM claimed
            UNION ALL SELECT seq, patient_id, study_id, series_id, modality, path, row_key, time, sha256 FROM items),
        owner AS (SELECT study_id, arg_min(patient_id, seq) AS patient_id FROM claimed
                  WHERE study_id IS NOT NULL AND patient_id IS NOT NULL GROUP BY study_id),
        identified AS (SELECT r.* REPLACE (coalesce(r.patient_id, o.patient_id) AS patient_id)
                       FROM rows r LEFT JOIN owner o ON r.patient_id IS NULL AND r.study_id = o.study_id)
        SELECT * REPLACE (coalesce(study_id, patient_id || '/' || modality) AS study_id,
                          coalesce(series_id, study_id, patient_id || '/' || modality) AS series_id),
               study_id IS NULL AS placeholder, NULL::VARCHAR AS linked_from
        FROM identified WHERE patient_id IS NOT NULL""")
    stats.n_unidentified = (store.scalar("SELECT count(*) FROM claimed") + stats.n_items_from_tables
                            - store.scalar("SELECT count(*) FROM manifest"))
    link_modalities(store, spec, stats)
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
    con.execute("CREATE VIEW complete AS SELECT * FROM kept WHERE study_id NOT IN (SELECT study_id FROM incomplete)")
    return "complete"


def ingest(spec: CohortSpec, root: str | Path, out: str | Path, *, workers: int = 2, chunk: int = 64,
           progress_every: int = 1000, memory_limit: str = MEMORY_LIMIT) -> IngestStats:
    """Scan ``root`` by ``spec`` and write the manifest to ``out`` (Parquet) and the file
    records to its sidecar; returns the run's counts (read the manifest from ``out``).
    ``memory_limit`` caps the database's buffer (past it, DuckDB works on disk)."""
    start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = IngestStats()
    missing = [t.path for t in spec.tables if not (root / t.path).is_file()]
    if missing:
        raise FileNotFoundError(f"tables named by the spec are missing under {root}: {missing}")
    sidecar = sidecar_path(out)
    fingerprint = rules_fingerprint(spec)
    store = _Store(out, memory_limit)
    try:
        scan_tree(spec, root, store, sidecar=sidecar, fingerprint=fingerprint, workers=workers, chunk=chunk,
                  skip={out, sidecar}, stats=stats, progress_every=progress_every)
        con = store.con
        _copy_atomic(con, f"SELECT {', '.join(RECORD_FIELDS)}, '{fingerprint}' AS rules FROM files ORDER BY seq",
                     sidecar)
        rows = con.execute("SELECT split_part(problem, ':', 1) AS kind, count(*) AS n FROM files "
                           "WHERE problem IS NOT NULL GROUP BY kind ORDER BY n DESC, kind").fetchall()
        stats.problems = {kind: int(n) for kind, n in rows}
        stats.n_problems = sum(stats.problems.values())
        rows_view = build_manifest(store, spec, root, stats)
        fractions, seed = spec.split.as_tuple(), spec.split.seed
        con.create_function("patient_split", lambda pid: stable_patient_split([pid], fractions, seed)[pid],
                            ["VARCHAR"], "VARCHAR")
        columns = ", ".join("patient_split(patient_id) AS split" if c == "split" else c for c in MANIFEST_COLUMNS)
        order = ", ".join(f"{c} NULLS FIRST" for c in ("patient_id", "study_id", "modality", "path", "row_key"))
        _copy_atomic(con, f"SELECT {columns} FROM {rows_view} ORDER BY {order}", out)
        stats.n_rows, stats.n_patients, stats.n_studies = con.execute(
            "SELECT count(*), count(DISTINCT patient_id), count(DISTINCT study_id) FROM read_parquet(?)",
            [str(out)]).fetchall()[0]
    finally:
        store.close()
    stats.seconds = time.perf_counter() - start
    stats.peak_rss_parent_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return stats


def _copy_atomic(con: duckdb.DuckDBPyConnection, query: str, target: Path) -> None:
    """Write a query's result to ``target`` (Parquet) so a reader never sees half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    con.execute(f"COPY ({query}) TO {_sql_text(tmp)} (FORMAT parquet)")
    os.replace(tmp, target)


def _sql_text(path: Path) -> str:
    """A path as an SQL string literal (COPY and SET take no parameters)."""
    return "'" + str(path).replace("'", "''") + "'"
