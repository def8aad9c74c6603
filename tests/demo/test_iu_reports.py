"""The IU chest X-ray reports loader: sources (wheel, .tgz, folder), parsing, errors."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from medmm.demo.iu_reports import WHEEL_MEMBER, IUReport, default_iu_source, load_iu_reports, mesh_labels
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.findings import FINDINGS

DEFAULT_WHEEL = "data/cache/torchxrayvision-1.5.7-py3-none-any.whl"

_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <uId id="CXR{n}"/>
  <MedlineCitation><Article><Abstract>
    <AbstractText Label="COMPARISON">None.</AbstractText>
    <AbstractText Label="INDICATION"/>
    <AbstractText Label="FINDINGS">  Heart size normal.
       No pleural effusion.  </AbstractText>
    <AbstractText Label="IMPRESSION">{impression}</AbstractText>
  </Abstract></Article></MedlineCitation>
  <MeSH><major>{mesh}</major><minor>ignored</minor></MeSH>
</eCitation>
"""


def _xml(n: int, impression: str = "Normal chest.", mesh: str = "normal") -> bytes:
    return _XML.format(n=n, impression=impression, mesh=mesh).encode()


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wheel(path: Path, tgz: bytes, member: str = WHEEL_MEMBER) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("torchxrayvision/__init__.py", "")
        zf.writestr(member, tgz)
    return path


# ----------------------------------------------------------------------------- the real data


@pytest.fixture(scope="module")
def iu_source() -> Path:
    path = Path(os.environ.get("MEDMM_IU_REPORTS", DEFAULT_WHEEL))
    if not path.exists():
        pytest.skip(f"IU reports not found at {path}: run `make data-cache` or set MEDMM_IU_REPORTS")
    return path


@pytest.fixture(scope="module")
def iu_reports(iu_source: Path) -> list[IUReport]:
    return load_iu_reports(iu_source)


def test_real_reports_counts_and_order(iu_reports: list[IUReport]) -> None:
    assert len(iu_reports) == 3955
    numbers = [r.number for r in iu_reports]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert sum("FINDINGS" in r.sections for r in iu_reports) == 3425  # as DATA.md says
    assert all(set(r.sections) <= {"COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"} for r in iu_reports)
    assert all(v and v == v.strip() for r in iu_reports for v in r.sections.values())
    assert sum("normal" in r.mesh_major for r in iu_reports) > 1000


def test_real_report_content(iu_reports: list[IUReport]) -> None:
    first = iu_reports[0]
    assert first.report_id == "CXR1"
    assert first.mesh_major == ("normal",)
    assert first.sections["FINDINGS"].startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert "There are no XXXX of a pleural effusion." in first.sections["FINDINGS"]
    assert first.sections["IMPRESSION"] == "Normal chest x-XXXX."
    cxr10 = next(r for r in iu_reports if r.report_id == "CXR10")
    assert "Stable calcified granuloma within the right upper lung." in cxr10.sections["FINDINGS"]


def test_real_wheel_matches_tgz_and_folder(iu_source: Path, iu_reports: list[IUReport], tmp_path: Path) -> None:
    if zipfile.is_zipfile(iu_source):
        with zipfile.ZipFile(iu_source) as zf:
            tgz = zf.read(WHEEL_MEMBER)
        (tmp_path / "r.tgz").write_bytes(tgz)
        assert load_iu_reports(tmp_path / "r.tgz") == iu_reports
    else:
        tgz = iu_source.read_bytes() if iu_source.is_file() else None
    if tgz is not None:
        folder = tmp_path / "extracted"
        with tarfile.open(fileobj=io.BytesIO(tgz)) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".xml") and m.name.rsplit("/", 1)[-1] in {"1.xml", "10.xml", "2.xml"}:
                    out = folder / m.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tf.extractfile(m).read())  # type: ignore[union-attr]
        sub = load_iu_reports(folder)
        assert [r.report_id for r in sub] == ["CXR1", "CXR2", "CXR10"]
        by_id = {r.report_id: r for r in iu_reports}
        assert all(r == by_id[r.report_id] for r in sub)


def test_default_iu_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "w.whl"
    target.write_bytes(b"x")
    monkeypatch.setenv("MEDMM_IU_REPORTS", str(target))
    assert default_iu_source() == target
    monkeypatch.setenv("MEDMM_IU_REPORTS", str(tmp_path / "missing.whl"))
    with pytest.raises(MedmmInputError, match="make data-cache"):
        default_iu_source()
    monkeypatch.delenv("MEDMM_IU_REPORTS")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MedmmInputError, match="make data-cache") as e:
        default_iu_source()
    assert "torchxrayvision-1.5.7-py3-none-any.whl" in str(e.value)


# ----------------------------------------------------------------------------- synthetic sources


def test_all_source_kinds_agree(tmp_path: Path) -> None:
    members = {
        "ecgen-radiology/10.xml": _xml(10, mesh="Cardiomegaly/mild"),
        "ecgen-radiology/2.xml": _xml(2),
        "ecgen-radiology/README.txt": b"not xml",
    }
    tgz = _tgz(members)
    (tmp_path / "r.tgz").write_bytes(tgz)
    wheel = _wheel(tmp_path / "t.whl", tgz)
    folder = tmp_path / "dir" / "ecgen-radiology"
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name.rsplit("/", 1)[-1]).write_bytes(data)

    from_wheel = load_iu_reports(wheel)
    assert from_wheel == load_iu_reports(str(tmp_path / "r.tgz")) == load_iu_reports(tmp_path / "dir")
    assert [r.report_id for r in from_wheel] == ["CXR2", "CXR10"]  # numeric, not string, order
    r10 = from_wheel[1]
    assert r10.sections == {
        "COMPARISON": "None.",
        "FINDINGS": "Heart size normal. No pleural effusion.",  # whitespace collapsed
        "IMPRESSION": "Normal chest.",
    }  # empty INDICATION absent
    assert r10.mesh_major == ("Cardiomegaly/mild",)
    assert hash(r10) == hash(load_iu_reports(wheel)[1])  # frozen, hashable without the dict


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: p / "nothing.whl", MedmmInputError, "does not exist"),
        (lambda p: _wheel(p / "w.whl", b"", member="other/file.tgz"), CorruptFileError, "no member"),
        (lambda p: (p / "bad.tgz").write_bytes(b"\x1f\x8b garbage") and p / "bad.tgz", CorruptFileError, "tar"),
        (lambda p: (p / "empty.tgz").write_bytes(_tgz({})) and p / "empty.tgz", InconsistentDataError, "no IU report"),
    ],
)
def test_bad_sources(tmp_path: Path, make, error: type[Exception], match: str) -> None:  # noqa: ANN001
    with pytest.raises(error, match=match):
        load_iu_reports(make(tmp_path))


def test_bad_xml_names_the_member(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", _tgz({"x/1.xml": _xml(1), "x/7.xml": b"<eCitation><uId id='CXR7'/>"}))
    with pytest.raises(CorruptFileError, match=r"x/7\.xml.*invalid XML"):
        load_iu_reports(wheel)


def test_missing_id_duplicate_id_and_bad_id(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "1.xml").write_bytes(b"<eCitation><MeSH/></eCitation>")
    with pytest.raises(CorruptFileError, match="uId"):
        load_iu_reports(folder)
    (folder / "1.xml").write_bytes(_xml(1))
    (folder / "copy.xml").write_bytes(_xml(1))
    with pytest.raises(InconsistentDataError, match="duplicate report id CXR1"):
        load_iu_reports(folder)
    (folder / "copy.xml").write_bytes(_xml(1).replace(b"CXR1", b"ABC"))
    with pytest.raises(InconsistentDataError, match="CXR<number>"):
        load_iu_reports(folder)


def test_entities_are_not_expanded_from_outside(tmp_path: Path) -> None:
    # An external entity must never be fetched: expat leaves it unexpanded (or
    # defusedxml refuses it); either way the report text does not contain the file.
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    evil = (
        f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<eCitation><uId id="CXR5"/><Abstract><AbstractText Label="FINDINGS">a &x; b</AbstractText></Abstract></eCitation>'
    ).encode()
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "5.xml").write_bytes(evil)
    try:
        reports = load_iu_reports(folder)
    except (CorruptFileError, InconsistentDataError):
        return
    assert all("TOP SECRET" not in v for r in reports for v in r.sections.values())


# ----------------------------------------------------------------------------- MeSH mapping


def test_mesh_labels() -> None:
    assert mesh_labels(["normal"]).no_finding
    lab = mesh_labels(
        [
            "Cardiomegaly/mild",
            "Pleural Effusion/left/small",
            "Pleural Effusion/right",
            "Calcified Granuloma/lung/upper lobe/right",
            "Lung/hyperdistention",
            "Opacity/lung/base/left",
            "Catheters, Indwelling/right",
        ]
    )
    assert set(lab.positive) == {"cardiomegaly", "pleural_effusion", "nodule", "emphysema", "consolidation", "support_devices"}
    assert lab.effusion_side == "bilateral"
    assert mesh_labels(["Costophrenic Angle/left/blunted"]).positive == ("pleural_effusion",)
    assert mesh_labels(["Costophrenic Angle/left/blunted"]).effusion_side is None
    assert mesh_labels(["Opacity/lung/upper lobe/right/round"]).positive == ("nodule",)
    assert mesh_labels(["Opacity/ribs/anterior"]).no_finding  # not a lung opacity
    assert mesh_labels(["Medical Device", "Surgical Instruments/abdomen", "Subcutaneous Emphysema"]).no_finding
    assert mesh_labels(["Implanted Medical Device/humerus/right"]).no_finding
    assert mesh_labels(["Pulmonary Congestion/mild"]).positive == ("edema",)
    assert len(mesh_labels(["Hydropneumothorax/right"]).positive) == 2
    assert set(FINDINGS) >= set(mesh_labels(["Mass/lung", "Tube, Inserted/abdomen"]).positive)
