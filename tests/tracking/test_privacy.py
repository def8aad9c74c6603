"""Nothing identifying reaches MLflow: identifiers planted in every place a cohort holds them
(DICOM header fields and private tags, file and folder names, report text, WFDB header
comments) are searched for in every byte a pipeline run writes to the store, and so are
their pseudonyms under any key the run's records could give away."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from PIL import Image

from medmm.cohort.manifest import Manifest, file_sha256
from medmm.cohort.pseudonym import pseudonym
from medmm.config.core import build_config
from medmm.metrics.reference_levels import REFERENCE_LEVELS_FILE, REFERENCE_MODEL_FILE
from medmm.tracking.figures import show_cohort_examples
from medmm.tracking.run_context import REDACTED_PREFIX, redacted_config, safe_skips, saved_config_yaml, source_tag
from medmm.workflows.contrastive.config import PretrainConfig
from tests.conftest import TINY_CONFIG, iu_source, tiny_overrides

PATIENT, STUDY = "MRN99812", "ACC55731"
NAME, PRIVATE_VALUE, ECG_COMMENT, REPORT_NAME = "Doe^Planted", "PRIV-4471", "NHS-9911-ECG", "Dr Quillfeather"
FOLDER = "ward7_smith"


def _plant(root: Path) -> tuple[Manifest, list[str]]:
    """Rewrite the demo cohort under ``root`` so that identifiers sit everywhere a real cohort
    holds them; returns the rewritten manifest and every planted value."""
    manifest = Manifest.load(root)
    table = manifest.table.copy()
    planted = [PATIENT, STUDY, NAME, PRIVATE_VALUE, ECG_COMMENT, REPORT_NAME, FOLDER, root.name]
    old_patients = {p: f"{PATIENT}{i:03d}" for i, p in enumerate(sorted(table["patient_id"].unique()))}
    old_studies = {s: f"{STUDY}{i:03d}" for i, s in enumerate(sorted(table["study_id"].unique()))}
    rows = []
    for row in table.itertuples(index=False):
        pid, sid = old_patients[row.patient_id], old_studies[row.study_id]
        src = root / row.path
        folder = root / FOLDER / pid / sid  # folder names carry the ids
        folder.mkdir(parents=True, exist_ok=True)
        if row.modality == "xray":
            ds = pydicom.dcmread(src)
            ds.PatientName, ds.PatientID, ds.AccessionNumber = NAME, pid, sid
            ds.private_block(0x0009, "PLANTED", create=True).add_new(0x10, "LO", PRIVATE_VALUE)
            dest = folder / f"{pid}_xray.dcm"
            ds.save_as(dest)
            extra = ()
        elif row.modality == "ecg":  # WFDB: the header names its record, so only the folder moves
            dest = folder / src.name
            for part in src.parent.glob(f"{src.stem}.*"):
                shutil.copy(part, folder / part.name)
            with dest.open("a") as f:
                f.write(f"# patient {pid} {ECG_COMMENT}\n")
            extra = (folder / f"{src.stem}.dat",)
        else:
            text = src.read_text().replace("FINDINGS:", f"FINDINGS: Seen by {REPORT_NAME} for {pid}.", 1)
            dest = folder / f"{pid}_report.txt"
            dest.write_text(text)
            extra = ()
        rows.append({**row._asdict(), "patient_id": pid, "study_id": sid, "path": dest.relative_to(root).as_posix(),
                     "sha256": file_sha256(dest, extra)})
    shutil.rmtree(root / "patients")
    # a real cohort: no synthetic ideal observer, so the examples figure is off by default
    for name in (REFERENCE_MODEL_FILE, REFERENCE_LEVELS_FILE):
        (root / name).unlink(missing_ok=True)
    manifest = Manifest(root, pd.DataFrame(rows, columns=table.columns))
    # one unreadable file, so that a skipped-file record (whose message names it) is logged
    bad = root / manifest.table[manifest.table["modality"] == "xray"]["path"].iloc[0]
    bad.write_bytes(bad.read_bytes()[:200])
    manifest.table.loc[manifest.table["path"] == bad.relative_to(root).as_posix(), "sha256"] = file_sha256(bad)
    manifest.save()
    return manifest, planted


def _guessable_pseudonyms(value: str, manifest_hash: str) -> list[str]:
    """The pseudonyms of ``value`` that anyone reading the run could compute: salted with the
    logged manifest hash, unkeyed, keyed with an empty key or with the manifest hash."""
    return [hashlib.sha256(f"{manifest_hash}:{value}".encode()).hexdigest()[:16],
            hashlib.sha256(value.encode()).hexdigest()[:16],
            hmac.new(b"", value.encode(), hashlib.sha256).hexdigest()[:16],
            hmac.new(manifest_hash.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]]


def _png_text(path: Path) -> str:
    with Image.open(path) as im:
        return " ".join(f"{k} {v}" for k, v in getattr(im, "text", {}).items())


@pytest.mark.slow
def test_no_planted_identifier_or_guessable_pseudonym_reaches_mlflow(tmp_path):
    from medmm.demo.generator import build_demo_cohort
    from medmm.workflows.contrastive.run import run

    root = tmp_path / f"cohort_{PATIENT}" / "ward_export"
    build_demo_cohort(root, n_studies=30, seed=5, workers=1, iu_source=iu_source())
    manifest, planted = _plant(root)
    planted.append(str(root))
    ids = sorted(set(manifest.table["patient_id"]) | set(manifest.table["study_id"]))
    manifest_hash = manifest.content_hash()
    needles = {v: v for v in planted + ids}
    for v in ids:
        for guess in _guessable_pseudonyms(v, manifest_hash):
            needles[guess] = f"pseudonym of {v}"

    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(root, tmp_path, "trainer.max_epochs=1",
                                                                     "eval.examples_figure=null"))
    outcome = run(cfg)
    assert outcome.n_skipped == 1

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        blobs = {"mlflow.db (dump)": "\n".join(con.iterdump()).encode()}
    artifacts = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
    for path in artifacts:
        blobs[str(path.relative_to(tmp_path))] = path.read_bytes()
        if path.suffix == ".png":
            blobs[f"{path.relative_to(tmp_path)} (text chunks)"] = _png_text(path).encode()
    assert any(p.name == "skipped_files.json" for p in artifacts) and any(p.name == "config.yaml" for p in artifacts)
    hits = [(where, what) for where, blob in blobs.items() for needle, what in needles.items()
            if needle.encode() in blob or needle.lower().encode() in blob.lower()]
    searched = sum(len(b) for b in blobs.values())
    print(f"searched {searched} bytes in {len(blobs)} blobs ({len(artifacts)} artifact files) for {len(needles)} values")
    assert not hits, hits[:20]
    # what is logged instead: the keyed pseudonym and a problem category
    skipped = next(p for p in artifacts if p.name == "skipped_files.json").read_text()
    assert '"category": "CorruptFileError"' in skipped or '"category": "InconsistentDataError"' in skipped, skipped
    assert not any(p.name == "retrieval_examples.png" for p in artifacts)  # off for a real cohort


def test_path_valued_config_fields_are_logged_as_keyed_hashes(tmp_path):
    cohort = tmp_path / f"{PATIENT}_cohort"
    cfg = build_config(PretrainConfig, TINY_CONFIG, tiny_overrides(cohort, tmp_path, "model.text.model_path=/srv/x"))
    logged = redacted_config(cfg, b"secret")
    text = repr(logged)
    assert PATIENT not in text and str(tmp_path) not in text and "/srv/x" not in text
    assert logged["data"]["root"] == f"{REDACTED_PREFIX}{pseudonym(str(cohort), b'secret')}"
    assert logged["tracking"]["uri"].startswith(REDACTED_PREFIX)
    assert logged["model"]["text"]["model_path"].startswith(REDACTED_PREFIX)
    assert logged["trainer"]["max_epochs"] == cfg.trainer.max_epochs  # everything else unchanged
    # the logged config still reads back as the schema (run/config.yaml is rebuilt by notebooks)
    assert isinstance(PretrainConfig.model_validate(logged), PretrainConfig)


def test_skipped_file_records_carry_the_pseudonym_and_a_category_not_the_message():
    record = {"study_id": STUDY, "path": f"{FOLDER}/{PATIENT}_ecg.hea",
              "problem": f"header {PATIENT}_ecg.hea needs 12 channels", "category": "InconsistentDataError"}
    (safe,) = safe_skips([record], b"secret")
    assert safe == {"study": pseudonym(STUDY, b"secret"), "suffix": ".hea", "category": "InconsistentDataError"}
    (odd,) = safe_skips([{"study_id": STUDY, "path": f"scan.{PATIENT}", "problem": "x"}], b"secret")
    assert odd["suffix"] == "" and odd["category"] == "unreadable"


def test_examples_figure_is_off_for_a_real_cohort_and_on_for_the_demo_or_when_asked(tmp_path):
    assert not show_cohort_examples(None, tmp_path)
    assert show_cohort_examples(True, tmp_path)
    (tmp_path / REFERENCE_MODEL_FILE).write_text("{}")
    assert show_cohort_examples(None, tmp_path)
    assert not show_cohort_examples(False, tmp_path)


def test_configs_saved_beside_model_weights_and_source_tags_carry_no_cohort_path(tmp_path):
    """A registered model's config.yaml and the tags naming a local model folder hash every path
    outside the model section; the model section stays as it is (rebuilding the model may need
    a local weights folder it names), and the saved config still validates."""
    root = tmp_path / "cohort_MRN99812"
    cfg = build_config(PretrainConfig, TINY_CONFIG, [f"data.root={root}", f"output_dir={tmp_path / 'ward7_smith'}",
                                                     f"data.cache_dir={root / '.cache'}"])
    saved = saved_config_yaml(cfg)
    assert "MRN99812" not in saved and "ward7_smith" not in saved and str(tmp_path) not in saved
    assert saved.count(REDACTED_PREFIX) >= 3
    path = tmp_path / "config.yaml"
    path.write_text(saved)
    assert build_config(PretrainConfig, path).model == cfg.model
    folder_tag = source_tag(root / "model", cfg)
    assert folder_tag.startswith(REDACTED_PREFIX) and "MRN99812" not in folder_tag
    assert source_tag("models:/medmm-more@champion", cfg) == "models:/medmm-more@champion"

