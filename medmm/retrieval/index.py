"""A persistent FAISS index of a cohort's study embeddings (one index per modality in the
shared space), stamped with the checkpoint's and the manifest's hashes so that an index
built from other weights or other data is refused instead of silently answering wrong.

Embeddings are L2-normalised, so inner product = cosine similarity. Small cohorts get an
exact index (``IndexFlatIP``); past ``exact_max`` vectors an approximate one: HNSW
(Malkov & Yashunin, 2018) or IVF (inverted lists over k-means cells).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medmm.console import progress
from medmm.io.errors import MedmmInputError

META, STUDIES = "index.json", "studies.parquet"
FORMAT_VERSION = 1
ADD_CHUNK = 20_000  # vectors added to an index per step of its progress bar


class StaleIndexError(MedmmInputError):
    """The index was built from other weights or another cohort than the ones given now."""


@dataclass(frozen=True)
class IndexParams:
    exact_max: int = 50_000
    approximate: str = "hnsw"  # hnsw | ivf
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None  # None: 4 * sqrt(n)
    ivf_nprobe: int = 16


def build_faiss_index(vectors: np.ndarray, params: IndexParams, description: str = "index build"):
    """Exact inner-product index up to ``exact_max`` vectors, else HNSW / IVF; vectors are
    added in chunks of ``ADD_CHUNK`` under a progress bar named ``description``."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n <= params.exact_max:
        index = faiss.IndexFlatIP(d)
    elif params.approximate == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.hnsw_ef_construction
        index.hnsw.efSearch = params.hnsw_ef_search
    elif params.approximate == "ivf":
        nlist = params.ivf_nlist or int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = params.ivf_nprobe
    else:
        raise ValueError(f"unknown approximate index {params.approximate!r}: hnsw or ivf")
    for start in progress(range(0, n, ADD_CHUNK), description):
        index.add(x[start : start + ADD_CHUNK])
    return index


def index_kind(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    return "exact"


@dataclass
class StudyIndex:
    folder: Path
    meta: dict
    studies: pd.DataFrame  # study_id, split, report_text (row i = vector i)
    indexes: dict  # modality -> faiss index
    # The table's hit fields (study_id, split, report_text) as object arrays of str, built
    # once: a per-hit DataFrame lookup costs more than the FAISS search itself, and one
    # fancy-indexing step per field attaches them to a whole batch of hits.
    hit_fields: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self):
        self.hit_fields = tuple(np.array(self.studies[column].astype(str).tolist() + [None], dtype=object)
                                for column in ("study_id", "split", "report_text"))  # [-1]: no hit

    @classmethod
    def build(cls, folder: Path, embeddings: dict[str, np.ndarray], studies: pd.DataFrame, params: IndexParams,
              meta: dict) -> "StudyIndex":
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        indexes, timings = {}, {}
        for modality, vectors in embeddings.items():
            if len(vectors) != len(studies):
                raise ValueError(f"{modality}: {len(vectors)} vectors for {len(studies)} studies")
            start = time.perf_counter()
            indexes[modality] = build_faiss_index(vectors, params, f"index build, {modality}")
            timings[modality] = time.perf_counter() - start
            faiss.write_index(indexes[modality], str(folder / f"{modality}.faiss"))
        studies.reset_index(drop=True).to_parquet(folder / STUDIES, index=False)
        meta = {**meta, "format_version": FORMAT_VERSION, "n_studies": len(studies),
                "modalities": {m: {"kind": index_kind(i), "dim": int(i.d), "build_s": timings[m]}
                               for m, i in indexes.items()},
                "params": params.__dict__}
        (folder / META).write_text(json.dumps(meta, indent=2))
        return cls(folder, meta, studies.reset_index(drop=True), indexes)

    @classmethod
    def load(cls, folder: Path, *, checkpoint_sha256: str, manifest_sha256: str) -> "StudyIndex":
        """Open an index, refusing it when it was built from other weights or another cohort."""
        import faiss

        folder = Path(folder)
        meta_path = folder / META
        if not meta_path.exists():
            raise MedmmInputError(folder, f"no retrieval index here ({META} missing): run the `build` command first")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise MedmmInputError(meta_path, f"unreadable index metadata ({exc})") from None
        if meta.get("checkpoint_sha256") != checkpoint_sha256:
            raise StaleIndexError(folder, (
                f"stale index: built with checkpoint {str(meta.get('checkpoint_sha256'))[:12]}, but the model "
                f"given now has weights {checkpoint_sha256[:12]}; rebuild it with the `build` command"))
        if meta.get("manifest_sha256") != manifest_sha256:
            raise StaleIndexError(folder, (
                f"stale index: built from cohort manifest {str(meta.get('manifest_sha256'))[:12]}, but the "
                f"cohort now has manifest {manifest_sha256[:12]}; rebuild it with the `build` command"))
        indexes = {}
        for modality in meta["modalities"]:
            path = folder / f"{modality}.faiss"
            try:
                indexes[modality] = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise MedmmInputError(path, f"unreadable FAISS index ({str(exc).splitlines()[0][:200]})") from None
        studies = pd.read_parquet(folder / STUDIES)
        return cls(folder, meta, studies, indexes)

    def search(self, query: np.ndarray, against: str, k: int) -> "SearchResult":
        """Top-``k`` studies per query vector in the ``against`` modality's index."""
        if against not in self.indexes:
            raise ValueError(f"no {against!r} index here; built: {', '.join(self.indexes)}")
        q = np.ascontiguousarray(np.atleast_2d(query), dtype=np.float32)
        study_ids, splits, reports = self.hit_fields
        scores, rows = self.indexes[against].search(q, min(k, len(study_ids) - 1))
        # FAISS marks a missing hit (an approximate index may find fewer than k) with -1, which
        # indexes the fields' trailing None
        return SearchResult(scores, rows, study_ids[rows], splits[rows], reports[rows])


@dataclass(frozen=True)
class SearchResult(Sequence):
    """The hits of a batch of queries, column by column (``[queries, k]`` arrays: score,
    table row, study id, split, report text; a row of -1 is no hit, its fields None).
    ``result[i]`` is query i's hits as JSON-ready dicts (rank, study_id, split, score,
    report), a missing hit left out but keeping its rank slot."""

    scores: np.ndarray
    rows: np.ndarray
    study_ids: np.ndarray
    splits: np.ndarray
    reports: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, query):
        if isinstance(query, slice):
            return [self[i] for i in range(*query.indices(len(self)))]
        return [{"rank": rank, "study_id": study_id, "split": split, "score": score, "report": report}
                for rank, (row, study_id, split, score, report) in enumerate(
                    zip(self.rows[query].tolist(), self.study_ids[query], self.splits[query],
                        self.scores[query].tolist(), self.reports[query]), start=1)
                if row >= 0]


def format_hits(hits: list[dict], width: int = 90) -> str:
    """A readable table: rank, score, study, split and the start of its report."""
    lines = [f"{'rank':>4}  {'score':>6}  {'study':<18} {'split':<5}  report", "-" * (44 + width)]
    for h in hits:
        text = " ".join(h["report"].split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        lines.append(f"{h['rank']:>4}  {h['score']:>6.3f}  {h['study_id']:<18} {h['split']:<5}  {text}")
    return "\n".join(lines)
