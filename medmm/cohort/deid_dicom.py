"""DICOM de-identification per the Basic Application Level Confidentiality Profile
(DICOM PS3.15 Annex E, table E.1-1), with the Retain Longitudinal Temporal Information
with Modified Dates option.

Two maintained libraries do the work, each for what it does well:

- ``dicognito`` replaces every person name, every date / time (shifted by one offset
  per patient, so intervals within a patient are kept), IDs, addresses and equipment,
  anywhere in the dataset, nested sequences included. One dicognito ``Anonymizer`` is
  seeded per patient from a secret key.
- ``dicom-anonymizer`` (Kitware) ships table E.1-1 of the standard as data (release
  2026c): every attribute the profile removes (X), empties (Z) or replaces (D). medmm
  walks the dataset recursively and applies those actions to what dicognito leaves:
  free-text descriptions and comments, institution, protocol and device names, ...
  Private attributes are removed (the profile's default).

The keys that files are joined by get one keyed pseudonym per value, the same for every
patient and every run with the key (medmm.cohort.pseudonym), from a handler that runs
before dicognito's own: each instance UID becomes ``2.25.<HMAC>`` (so the slices of a
series and the series of a study stay together), and PatientID, OtherPatientIDs,
AccessionNumber and StudyID 16 hex characters of an HMAC, wherever they occur. A file or
folder named by such a value gets the same pseudonym (medmm.workflows.deid.run), so a
report named by its accession number still joins its study.

Images flagged ``BurnedInAnnotation = YES`` are refused unless the caller allows them.
Pixel data is never touched (checked). The audit counts attribute keywords and
actions, never values.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from pydicom.datadict import keyword_for_tag

from medmm.cohort.pseudonym import pseudonym, pseudonym_uid
from medmm.io.errors import MedmmInputError

PROFILE_TABLE = "dicomfields_2026c"
# Keywords whose pseudonym is kept: the profile allows a dummy value (Z / D) and a
# consistent pseudonym keeps a patient's studies together after de-identification.
KEEP_PSEUDONYM = {"PatientID", "PatientName", "AccessionNumber", "StudyID"}
# IDs files are joined by (a cohort spec's patient / accession keys): keyed pseudonyms.
LINK_IDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID")
# UIDs the DICOM standard itself defines (SOP classes, transfer syntaxes, coding schemes),
# also where a keyword does not say so (ReferencedTransferSyntaxUIDInFile): kept.
STANDARD_UID_ROOT = "1.2.840.10008."
_SHIFTED_VRS = {"DA", "DT", "TM"}
_TEXT_VRS = {"LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "PN"}
_METHOD = "medmm: PS3.15 E.1-1 Basic Profile, dates shifted"  # LO: 64 chars at most


class BurnedInAnnotationRefused(MedmmInputError):
    """The image says it carries burned-in annotation (text in the pixels)."""


def _letters(category: str) -> str:
    """'X_Z_D_TAGS' -> 'XZD'; the first letter is the strictest action the profile allows."""
    return "".join(p for p in category.removesuffix("_TAGS").split("_") if p in ("X", "Z", "D", "U"))


def profile_actions() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """Table E.1-1 from dicom-anonymizer: exact tag -> actions, and masked repeating groups."""
    import importlib

    from dicomanonymizer.dicomfields_selector import ANONYMIZATION_CATEGORIES

    table = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{PROFILE_TABLE}")
    exact, masked = {}, []
    for category in ANONYMIZATION_CATEGORIES:
        letters = _letters(category)
        if not letters:
            continue
        for entry in getattr(table, category):
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = letters
            else:
                masked.append((*entry, letters))
    return exact, masked


class LinkKeyPseudonyms(ElementAnonymizer):
    """A dicognito element handler, run before its own ones: instance UIDs and the link IDs
    become keyed pseudonyms of their value alone (dicognito's depend on its per-patient
    seed, so one accession number or UID under two patients would part)."""

    def __init__(self, key: bytes):
        self.key = key
        self.ids = {pydicom.datadict.tag_for_keyword(k) for k in LINK_IDS}

    def __call__(self, dataset, data_element) -> bool:
        if not data_element.value:
            return False
        if data_element.VR == "UI":
            keyword = keyword_for_tag(data_element.tag)
            if keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID" or \
                    str(data_element.value).startswith(STANDARD_UID_ROOT):
                return False  # what the object is, not who
            make = pseudonym_uid
        elif data_element.tag in self.ids:
            make = pseudonym
        else:
            return False
        value = data_element.value
        if isinstance(value, pydicom.multival.MultiValue):
            data_element.value = [make(str(v).strip(), self.key) for v in value]
        else:
            data_element.value = make(str(value).strip(), self.key)
        return True

    def describe_actions(self):
        yield "Replace instance UIDs with 2.25.<keyed hash> and " + ", ".join(LINK_IDS) + " with keyed hashes"


@dataclass
class DicomDeidentifier:
    """De-identifies pydicom datasets in place; one per run (it holds the per-patient
    anonymizers, so a patient's files get one date shift and one set of pseudonyms)."""

    key: bytes
    allow_burned_in: bool = False
    _anonymizers: dict[str, object] = field(default_factory=dict, repr=False)
    _exact: dict[int, str] = field(default_factory=dict, repr=False)
    _masked: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._exact, self._masked = profile_actions()

    def _anonymizer(self, patient_id: str):
        """Seeded per patient: one date shift per patient, names and other IDs per patient."""
        if patient_id not in self._anonymizers:
            seed = hmac.new(self.key, f"patient:{patient_id}".encode(), hashlib.sha256).hexdigest()
            anonymizer = Anonymizer(seed=seed)
            anonymizer.add_element_handler(LinkKeyPseudonyms(self.key))
            self._anonymizers[patient_id] = anonymizer
        return self._anonymizers[patient_id]

    def _action(self, tag: int) -> str | None:
        if tag in self._exact:
            return self._exact[tag]
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, gmask, emask, letters in self._masked:
            if group & gmask == g & gmask and element & emask == e & emask:
                return letters
        return None

    def deidentify(self, ds, where: str | Path | None = None) -> Counter:
        """Returns counts of ``"<action>:<keyword>"`` (no values)."""
        burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
        if burned == "YES" and not self.allow_burned_in:
            raise BurnedInAnnotationRefused(where, "BurnedInAnnotation is YES (text may be burned into the pixels); "
                                                   "refused unless --allow-burned-in")
        pixels_before = hashlib.sha256(ds.PixelData).digest() if "PixelData" in ds else None
        audit: Counter = Counter()

        def count_private(dataset, elem):
            if elem.tag.is_private:
                audit["removed:private"] += 1
        ds.walk(count_private)
        ds.remove_private_tags()

        def count_library(dataset, elem):
            kw = elem.keyword or f"{elem.tag}"
            if (elem.VR == "PN" or kw in KEEP_PSEUDONYM) and elem.value:
                audit[f"pseudonymised:{kw}"] += 1
            elif elem.VR == "UI" and elem.value and not kw.endswith("ClassUID") and kw != "TransferSyntaxUID":
                audit[f"remapped:{kw}"] += 1
            elif elem.VR in _SHIFTED_VRS and elem.value:
                audit[f"shifted:{kw}"] += 1
        ds.walk(count_library)
        if hasattr(ds, "file_meta"):
            ds.file_meta.walk(count_library)
        self._anonymizer(str(ds.get("PatientID", "") or "")).anonymize(ds)

        self._apply_profile(ds, audit)
        if burned != "YES":
            ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = _METHOD
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        codes = []
        for value, meaning in (("113100", "Basic Application Confidentiality Profile"),
                               ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")):
            item = pydicom.Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        if pixels_before is not None and hashlib.sha256(ds.PixelData).digest() != pixels_before:
            raise RuntimeError("de-identification changed pixel data")  # a bug, never expected
        return audit

    def _apply_profile(self, dataset, audit: Counter) -> None:
        for elem in list(dataset):
            kw = elem.keyword or f"{elem.tag}"
            letters = self._action(int(elem.tag))
            if elem.VR == "SQ":
                if letters and "X" in letters:
                    del dataset[elem.tag]
                    audit[f"removed:{kw}"] += 1
                else:
                    for item in elem.value:
                        self._apply_profile(item, audit)
                continue
            if not letters or kw in KEEP_PSEUDONYM or elem.VR in _SHIFTED_VRS or elem.VR == "UI" or "U" in letters:
                continue  # not in the table, or already pseudonymised / shifted / remapped by dicognito
            if "X" in letters:
                del dataset[elem.tag]
                audit[f"removed:{kw}"] += 1
            elif "Z" in letters:
                if elem.value not in (None, "", b""):
                    elem.value = "" if elem.VR in _TEXT_VRS else None
                    audit[f"emptied:{kw}"] += 1
            elif "D" in letters and elem.value not in (None, "", b""):
                elem.value = "ANONYMIZED" if elem.VR in _TEXT_VRS else None
                audit[f"replaced:{kw}"] += 1
