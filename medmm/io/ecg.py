"""ECG readers: WFDB records and DICOM waveform files.

Everything here works on plain numpy arrays (no torch). The one in-memory type is
:class:`ECGRecord`: ``signal`` is float32 ``[leads, time]`` in physical units (by
default converted to millivolts), with the sampling rate, lead names and units.

Bad input raises :class:`~medmm.io.errors.CorruptFileError` (cannot be parsed: not a
WFDB header, not DICOM, missing data file) or
:class:`~medmm.io.errors.InconsistentDataError` (parses but disagrees with itself:
data file shorter than the header says, NaNs, zero leads, unknown units); the message
always names the file.

Lead names are normalised to the standard spelling (``"Lead I (Einthoven)"`` -> ``"I"``,
``"AVR"`` -> ``"aVR"``, ``"v1"`` -> ``"V1"``); names that are not one of the standard 12
leads are kept as given (stripped).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from medmm.io.dicom import parse_dicom
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.guard import check_declared_size, reader_boundary

__all__ = [
    "STANDARD_LEADS",
    "ECGRecord",
    "normalize_lead_name",
    "read_wfdb",
    "read_dicom_ecg",
    "read_ecg",
    "select_leads",
    "resample_ecg",
    "bandpass_ecg",
]

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
_CANONICAL = {name.lower(): name for name in STANDARD_LEADS}

# Voltage units -> factor to millivolts. Keys are lower-cased; DICOM uses UCUM codes
# ("uV", "mV"), WFDB headers free text ("mV", "uV", "V").
_TO_MV = {
    "nv": 1e-6,
    "uv": 1e-3,
    "\u00b5v": 1e-3,  # micro sign
    "\u03bcv": 1e-3,  # greek mu
    "mv": 1.0,
    "v": 1e3,
}

# Bytes per sample of the common WFDB formats, for the truncation check.
_WFDB_BYTES_PER_SAMPLE = {
    "8": 1.0, "80": 1.0, "16": 2.0, "61": 2.0, "160": 2.0, "212": 1.5,
    "24": 3.0, "32": 4.0, "310": 4.0 / 3.0, "311": 4.0 / 3.0,
}


@dataclass(frozen=True)
class ECGRecord:
    """A multi-lead ECG in physical units.

    ``signal`` is float32 ``[n_leads, n_samples]`` and read-only (copy it to modify);
    ``units[i]`` is the unit of lead ``i`` (``"mV"`` after conversion); ``path`` is
    the file it came from (``None`` for an in-memory record).
    """

    signal: np.ndarray
    fs: float
    lead_names: tuple[str, ...]
    units: tuple[str, ...]
    path: str | None = None

    def __post_init__(self) -> None:
        sig = np.asarray(self.signal, dtype=np.float32)
        if sig.ndim != 2:
            raise ValueError(f"ECGRecord.signal must be 2-D [leads, time], got shape {sig.shape}")
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise ValueError(f"ECGRecord.fs must be a positive number, got {self.fs!r}")
        names = tuple(str(n) for n in self.lead_names)
        units = tuple(str(u) for u in self.units)
        if len(names) != sig.shape[0] or len(units) != sig.shape[0]:
            raise ValueError(
                f"ECGRecord: {sig.shape[0]} leads but {len(names)} lead names and {len(units)} units"
            )
        if sig is self.signal and sig.flags.writeable:
            sig = sig.copy()  # never freeze the caller's own array
        sig.flags.writeable = False
        object.__setattr__(self, "signal", sig)
        object.__setattr__(self, "fs", float(self.fs))
        object.__setattr__(self, "lead_names", names)
        object.__setattr__(self, "units", units)
        if self.path is not None:
            object.__setattr__(self, "path", str(self.path))

    @property
    def n_leads(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        """The samples of one lead, by (normalised) name."""
        key = normalize_lead_name(name)
        try:
            return self.signal[self.lead_names.index(key)]
        except ValueError:
            raise KeyError(f"lead {name!r} not in {self.lead_names}") from None


@functools.lru_cache(maxsize=1024)  # a cohort spells its leads a few ways, every record alike
def normalize_lead_name(name: str) -> str:
    """Standard spelling of a lead name: ``"Lead I (Einthoven)"`` -> ``"I"``,
    ``"Lead aVR"`` / ``"AVR"`` -> ``"aVR"``, ``"v1"`` -> ``"V1"``; anything else is
    returned stripped but otherwise unchanged."""
    s = str(name).strip()
    s = re.sub(r"\s*\(.*?\)\s*", " ", s).strip()  # drop "(Einthoven)", "(Goldberger)"
    s = re.sub(r"^(lead|ecg\s+lead|mdc_ecg_lead)[\s_:-]*", "", s, flags=re.IGNORECASE)
    return _CANONICAL.get(s.lower(), s)


_RECORD_LINE = re.compile(r"^(\S+)\s+(\d+)(?:\s+(\S+)(?:\s+(\d+))?)?")
_FORMAT_FIELD = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")


def _light_layout(hea: Path) -> dict | None:
    """n_sig, sig_len and each signal's file / format / samples per frame / byte offset
    from a plain single-segment header (PhysioNet's header(5) format), and under
    ``direct`` the :class:`_Format16` plan of a plain format-16 record (else None); None
    for anything else (multi-segment, odd syntax), which is then left to wfdb.rdheader."""
    try:
        text = hea.read_text(encoding="latin-1")
    except OSError:
        return None
    lines = [ln for ln in map(str.strip, text.splitlines()) if ln and not ln.startswith("#")]
    layout = _layout_of_lines(lines)
    if layout is not None and "bad_fs" not in layout and text.isascii():
        layout["direct"] = _direct_format16(lines, layout)
    return layout


def _layout_of_lines(lines: list[str]) -> dict | None:
    if not lines:
        return None
    m = _RECORD_LINE.match(lines[0])
    if m is None or "/" in m.group(1):
        return None
    n_sig = int(m.group(2))
    if len(lines) < 1 + n_sig:
        return None
    fs = None  # absent: the format's default (250 Hz), as wfdb reads it
    if m.group(3) is not None:
        fs = _positive_rate(m.group(3).split("/")[0].split("(")[0])
        if fs is None:  # wfdb would silently fall back to 250 Hz here
            return {"bad_fs": m.group(3)}
    layout: dict = {"n_sig": n_sig, "sig_len": None if m.group(4) is None else int(m.group(4)), "fs": fs,
                    "file_name": [], "fmt": [], "spf": [], "offset": []}
    for line in lines[1:1 + n_sig]:
        tokens = line.split(None, 2)
        if len(tokens) < 2:
            return None
        layout["file_name"].append(tokens[0])
        if tokens[1].isdigit():  # the usual plain format: one sample per frame, no offset
            layout["fmt"].append(tokens[1])
            layout["spf"].append(1)
            layout["offset"].append(0)
            continue
        f = _FORMAT_FIELD.match(tokens[1])
        if f is None:
            return None
        layout["fmt"].append(f.group(1))
        layout["spf"].append(int(f.group(2) or 1))
        layout["offset"].append(int(f.group(4) or 0))
    return layout


@dataclass(frozen=True)
class _Format16:
    """A record medmm decodes itself: every lead in one format-16 file, one sample per
    frame, no skew or byte offset; the physical conversion as wfdb reads the header."""

    file_name: str
    fs: float
    gain: np.ndarray  # float64 per lead
    baseline: np.ndarray  # int64 per lead
    units: tuple[str, ...]
    names: tuple[str, ...]


def _direct_format16(lines: list[str], layout: dict) -> _Format16 | None:
    """The :class:`_Format16` plan of a plain format-16 record, read with wfdb's own header
    grammar (``wfdb.io.header.rx_record`` / ``rx_signal``) and its read defaults (gain
    200 when missing or 0, baseline = ADC zero when missing, else 0, units mV), or None
    for any other record, which wfdb.rdrecord reads.

    wfdb parses a header through a pandas lookup per field: four fifths of reading a
    10-s 12-lead record. tests/io/test_ecg.py checks the result against wfdb.rdrecord's
    ``p_signal`` bit for bit over varied headers."""
    from wfdb.io.header import rx_record, rx_signal

    n_sig = layout["n_sig"]
    if len(set(layout["file_name"])) != 1 or layout["file_name"][0] == "~":
        return None
    if any(f != "16" for f in layout["fmt"]) or any(x != 1 for x in layout["spf"]) or any(layout["offset"]):
        return None
    record = rx_record.match(lines[0])
    if record is None or record["n_seg"] or not record["sig_len"]:
        return None
    fs = float(record["fs"] or 250)  # wfdb's default rate
    if layout["fs"] is not None and fs != layout["fs"]:
        return None  # wfdb reads the rate otherwise: read_wfdb reports the ambiguity
    gain, baseline, units, names = [], [], [], []
    for line in lines[1:1 + n_sig]:
        m = rx_signal.match(line)
        if m is None or m["fmt"] != "16" or m["skew"] or m["byte_offset"] or m["samps_per_frame"] not in ("", "1"):
            return None
        if m["file_name"] != layout["file_name"][0] or not m["sig_name"]:
            return None
        try:
            g = float(m["adc_gain"]) if m["adc_gain"] else 200.0
            b = int(m["baseline"]) if m["baseline"] else int(m["adc_zero"] or 0)
        except ValueError:
            return None
        gain.append(g if g != 0 else 200.0)
        baseline.append(b)
        units.append(m["units"] or "mV")
        names.append(m["sig_name"])
    return _Format16(layout["file_name"][0], fs, np.array(gain, dtype=np.float64),
                     np.array(baseline, dtype=np.int64), tuple(units), tuple(names))


def _decode_format16(dat: Path, plan: _Format16, sig_len: int) -> np.ndarray:
    """Physical samples ``[samples, leads]`` in float64, as wfdb's ``dac`` computes them:
    (stored - baseline) / gain, NaN where the stored value is format 16's invalid -32768."""
    stored = np.fromfile(dat, dtype="<i2", count=sig_len * len(plan.gain)).reshape(sig_len, len(plan.gain))
    physical = stored.astype(np.float64)
    np.subtract(physical, plan.baseline, out=physical)
    np.divide(physical, plan.gain, out=physical)
    physical[stored == -32768] = np.nan
    return physical


def _wfdb_record_base(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix == ".hea":
        return p.with_suffix("")
    if p.suffix == ".dat":
        return p.with_suffix("")
    return p


@reader_boundary("WFDB record")
def read_wfdb(
    path: str | os.PathLike, *, to_millivolts: bool = True, allow_nan: bool = False
) -> ECGRecord:
    """Read a single-segment WFDB record (``path`` to the ``.hea`` or without extension).

    Checks, before trusting wfdb: the header parses, every data file it names exists
    and holds at least as many samples as the header says (wfdb may otherwise fail
    obscurely or return fewer samples), there is at least one lead, and (unless
    ``allow_nan``) no sample is missing (NaN). With ``to_millivolts`` voltage leads are
    converted to mV; a lead in a unit that is not a voltage raises.
    """
    import wfdb

    base = _wfdb_record_base(path)
    hea = base.with_name(base.name + ".hea")
    if not hea.is_file():
        raise CorruptFileError(hea, "WFDB header file not found")
    # wfdb parses a header slowly (pandas lookups), and rdrecord parses it again: the
    # checks below read the layout from a light parse, wfdb.rdheader only when that fails
    layout = _light_layout(hea)
    if layout is None:
        try:
            header = wfdb.rdheader(str(base))
        except Exception as exc:  # wfdb raises HeaderSyntaxError, IndexError, ValueError ...
            raise CorruptFileError(hea, f"not a valid WFDB header ({type(exc).__name__}: {exc})") from exc
        if getattr(header, "n_seg", None) is not None:
            raise CorruptFileError(hea, "multi-segment WFDB records are not supported")
        n_sig = int(header.n_sig or 0)
        layout = {
            "n_sig": n_sig,
            "sig_len": header.sig_len,
            "file_name": list(header.file_name or []),
            "fmt": [str(f) for f in (header.fmt or [])],
            "spf": [int(x or 1) for x in (header.samps_per_frame or [1] * n_sig)],
            "offset": [int(b or 0) for b in (header.byte_offset or [0] * n_sig)],
        }
    if "bad_fs" in layout:
        raise InconsistentDataError(hea, f"WFDB header's sampling frequency {layout['bad_fs']!r} is not a positive number")
    n_sig = int(layout["n_sig"])
    if n_sig == 0:
        raise InconsistentDataError(hea, "WFDB header declares zero leads")
    sig_len = layout["sig_len"]
    if sig_len is None:
        raise InconsistentDataError(hea, "WFDB header gives no signal length")
    sig_len = int(sig_len)
    if sig_len == 0:
        raise InconsistentDataError(hea, "WFDB header declares zero samples")
    check_declared_size(hea, (n_sig, sig_len), 8, "WFDB header (leads, samples)")

    # Data files: existence and size against the header.
    spf, offsets = layout["spf"], layout["offset"]
    per_file: dict[str, list[int]] = {}
    for ch, fname in enumerate(layout["file_name"]):
        per_file.setdefault(fname, []).append(ch)
    for fname, chans in per_file.items():
        dat = hea.parent / fname
        if not dat.is_file():
            raise CorruptFileError(dat, f"data file named by WFDB header {hea.name} not found")
        # each channel's own format: a frame interleaves every channel of the file
        fmts = [str(layout["fmt"][c]) for c in chans]
        bps = [_WFDB_BYTES_PER_SAMPLE.get(f) for f in fmts]
        if None in bps:
            continue  # compressed / unusual format: rely on the length check below
        bytes_per_frame = sum(spf[c] * b for c, b in zip(chans, bps))
        need = offsets[chans[0]] + int(np.ceil(sig_len * bytes_per_frame))
        have = dat.stat().st_size
        if have < need:
            raise InconsistentDataError(
                dat,
                f"data file is truncated: header {hea.name} needs {need} bytes "
                f"({sig_len} samples x {len(chans)} leads, formats {'/'.join(sorted(set(fmts)))}), file has {have}",
            )

    plan = layout.get("direct")
    if plan is not None:
        signal = _decode_format16(hea.parent / plan.file_name, plan, sig_len).T
        names = tuple(normalize_lead_name(n) for n in plan.names)
        return _finish(signal, plan.fs, names, plan.units, hea, to_millivolts, allow_nan)
    try:
        rec = wfdb.rdrecord(str(base), physical=True, return_res=64)
    except Exception as exc:
        raise InconsistentDataError(
            hea, f"wfdb could not read the record ({type(exc).__name__}: {exc})"
        ) from exc
    sig = rec.p_signal
    if sig is None or sig.ndim != 2:
        raise InconsistentDataError(hea, "record has no signal")
    if sig.shape[0] != sig_len or sig.shape[1] != n_sig:
        raise InconsistentDataError(
            hea, f"read {sig.shape[0]} samples x {sig.shape[1]} leads, header says {sig_len} x {n_sig}"
        )
    signal = sig.T  # a view: _finish writes the float32 result in one pass
    names = tuple(normalize_lead_name(n) for n in rec.sig_name)
    units = tuple(str(u) if u else "NU" for u in (rec.units or ["NU"] * n_sig))
    fs = _positive_rate(rec.fs)
    if fs is None:
        raise InconsistentDataError(hea, f"WFDB header gives no valid sampling frequency ({rec.fs!r})")
    if layout.get("fs") is not None and abs(fs - layout["fs"]) > 1e-8 + 1e-5 * abs(layout["fs"]):  # np.isclose
        raise InconsistentDataError(hea, f"WFDB header's sampling frequency is ambiguous ({layout['fs']} or {fs})")
    return _finish(signal, fs, names, units, hea, to_millivolts, allow_nan)


# -------------------------------------------------------------------------- DICOM
@reader_boundary("DICOM waveform")
def read_dicom_ecg(
    path: str | os.PathLike,
    *,
    group: int | str | None = None,
    to_millivolts: bool = True,
    allow_nan: bool = False,
) -> ECGRecord:
    """Read one multiplex group of a DICOM waveform file.

    ``group``: index into the Waveform Sequence or its Multiplex Group Label (e.g.
    ``"RHYTHM"``, ``"MEDIAN BEAT"``); default: the group labelled ``RHYTHM`` if any,
    else the first. Values are pydicom's ``waveform_array`` (raw x Channel
    Sensitivity x Correction Factor + Baseline, in the Channel Sensitivity Units);
    lead names come from each channel's Channel Source Sequence Code Meaning.
    """
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if not p.is_file():
        raise CorruptFileError(p, "DICOM file not found")
    try:
        ds = parse_dicom(p)
    except MedmmInputError:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        raise CorruptFileError(p, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    try:
        seq = ds.WaveformSequence
    except AttributeError:
        raise CorruptFileError(p, "DICOM file has no Waveform Sequence (5400,0100)") from None
    if len(seq) == 0:
        raise CorruptFileError(p, "DICOM Waveform Sequence is empty")
    labels = [str(item.get("MultiplexGroupLabel", "")).strip() for item in seq]
    if group is None:
        index = labels.index("RHYTHM") if "RHYTHM" in labels else 0
    elif isinstance(group, str):
        if group not in labels:
            raise InconsistentDataError(p, f"no multiplex group labelled {group!r}; groups: {labels}")
        index = labels.index(group)
    else:
        index = int(group)
        if not 0 <= index < len(seq):
            raise InconsistentDataError(p, f"multiplex group {index} out of range (file has {len(seq)})")
    item = seq[index]
    n_ch = int(item.get("NumberOfWaveformChannels", 0) or 0)
    if n_ch == 0:
        raise InconsistentDataError(p, f"multiplex group {index} has zero channels")
    fs = _positive_rate(item.get("SamplingFrequency"))
    if fs is None:
        raise InconsistentDataError(p, f"multiplex group {index} has no valid Sampling Frequency")
    chdefs = item.get("ChannelDefinitionSequence")
    if chdefs is None or len(chdefs) != n_ch:
        raise InconsistentDataError(
            p, f"multiplex group {index}: {n_ch} channels but "
            f"{0 if chdefs is None else len(chdefs)} channel definitions"
        )
    n_samp = int(item.get("NumberOfWaveformSamples", 0) or 0)
    bits = int(item.get("WaveformBitsAllocated", 0) or 0)
    data = item.get("WaveformData")
    if n_samp > 0:
        check_declared_size(p, (n_samp, n_ch), 8, f"multiplex group {index} (samples, channels)")
    need = n_samp * n_ch * (bits // 8)
    if data is None or len(data) < need or n_samp == 0:
        raise InconsistentDataError(
            p, f"multiplex group {index}: Waveform Data holds {0 if data is None else len(data)} "
            f"bytes, {n_samp} samples x {n_ch} channels x {bits} bits need {need}"
        )
    try:
        arr = ds.waveform_array(index)  # [samples, channels], sensitivity applied
    except Exception as exc:
        raise CorruptFileError(p, f"cannot decode waveform group {index} ({type(exc).__name__}: {exc})") from exc
    names: list[str] = []
    units: list[str] = []
    for k, ch in enumerate(chdefs):
        src = ch.get("ChannelSourceSequence")
        meaning = str(src[0].get("CodeMeaning", "")) if src else ""
        names.append(normalize_lead_name(meaning) if meaning else f"ch{k}")
        useq = ch.get("ChannelSensitivityUnitsSequence")
        unit = str(useq[0].get("CodeValue", "")) if useq else ""
        units.append(unit or "NU")
    signal = np.ascontiguousarray(np.asarray(arr, dtype=np.float64).T)
    return _finish(signal, fs, tuple(names), tuple(units), p, to_millivolts, allow_nan)


# ------------------------------------------------------------------------ dispatch
def read_ecg(
    path: str | os.PathLike,
    *,
    to_millivolts: bool = True,
    allow_nan: bool = False,
    group: int | str | None = None,
) -> ECGRecord:
    """Read a WFDB record (``.hea`` path, or the record path without extension) or a
    DICOM waveform file (``group`` selects its multiplex group, see
    :func:`read_dicom_ecg`)."""
    p = Path(path)
    if p.suffix in (".hea", ".dat") or (
        not p.is_file() and p.with_name(p.name + ".hea").is_file()
    ):
        return read_wfdb(p, to_millivolts=to_millivolts, allow_nan=allow_nan)
    if not p.exists():
        raise CorruptFileError(p, "no such ECG file (nor a WFDB header next to it)")
    if p.is_file() and (p.suffix.lower() in (".dcm", ".dicom") or _has_dicom_preamble(p)):
        return read_dicom_ecg(p, group=group, to_millivolts=to_millivolts, allow_nan=allow_nan)
    if p.is_file() and p.with_name(p.name + ".hea").is_file():
        return read_wfdb(p, to_millivolts=to_millivolts, allow_nan=allow_nan)
    raise CorruptFileError(p, "not a recognised ECG file (expected a WFDB .hea or a DICOM waveform file)")


def _has_dicom_preamble(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _positive_rate(value) -> float | None:
    """A sampling frequency as a positive finite float, else None (missing or damaged)."""
    try:
        fs = float(value)
    except (TypeError, ValueError):
        return None
    return fs if np.isfinite(fs) and fs > 0 else None


def _check_finite(
    signal: np.ndarray, names: tuple[str, ...], path: Path, allow_nan: bool, stage: str = ""
) -> None:
    if np.isfinite(signal).all():  # one pass when clean; diagnose only when not
        return
    n_nan = int(np.isnan(signal).sum())
    if n_nan and not allow_nan:
        bad = [names[i] for i in np.flatnonzero(np.isnan(signal).any(axis=1))]
        raise InconsistentDataError(path, f"signal has {n_nan} missing (NaN) samples in leads {bad}")
    if np.isinf(signal).any():
        bad = [names[i] for i in np.flatnonzero(np.isinf(signal).any(axis=1))]
        raise InconsistentDataError(
            path, f"signal has infinite values in leads {bad}{' ' + stage if stage else ''} (check the gains)"
        )


def _finish(
    signal: np.ndarray,
    fs: float,
    names: tuple[str, ...],
    units: tuple[str, ...],
    path: Path,
    to_millivolts: bool,
    allow_nan: bool,
) -> ECGRecord:
    if signal.shape[0] == 0:
        raise InconsistentDataError(path, "record has zero leads")
    if signal.shape[1] == 0:
        raise InconsistentDataError(path, "record has zero samples")
    factors = np.ones(len(names))
    if to_millivolts:
        for i, (name, unit) in enumerate(zip(names, units)):
            f = _TO_MV.get(unit.strip().lower())
            if f is None:
                raise InconsistentDataError(
                    path, f"lead {name!r} is in unit {unit!r}, not a voltage: "
                    "cannot convert to mV (read with to_millivolts=False)"
                )
            factors[i] = f
        units = ("mV",) * len(names)
    # scale and cast in one pass; handed over read-only so ECGRecord need not copy it
    out = np.empty(signal.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.all(factors == 1.0):  # already in mV (or not converted): a cast alone
            np.copyto(out, signal, casting="same_kind")
        else:
            np.multiply(signal, factors[:, None], out=out, casting="same_kind")
    # one pass over the float32 result when it is clean (NaN and infinity survive the
    # cast); the record itself is looked at only to say what is wrong: missing samples or
    # infinite values in the file, or a gain of 1e-300 giving samples finite in float64
    # and infinite once stored
    if not np.isfinite(out).all():
        _check_finite(signal, names, path, allow_nan)
        _check_finite(out, names, path, allow_nan, "after conversion to float32 millivolts")
    out.flags.writeable = False
    return ECGRecord(out, fs, names, units, str(path))


# --------------------------------------------------------------- record-level ops
def select_leads(
    record: ECGRecord,
    lead_names: Sequence[str] = STANDARD_LEADS,
    *,
    derive_limb_leads: bool = True,
) -> ECGRecord:
    """A record with exactly ``lead_names`` in that order.

    With ``derive_limb_leads``, missing III / aVR / aVL / aVF are computed from I and
    II by the Einthoven / Goldberger relations (for 8-lead files such as
    deepfake-ecg's). A lead that is still missing raises InconsistentDataError.
    """
    have = {n: i for i, n in enumerate(record.lead_names)}
    rows: list[np.ndarray] = []
    units: list[str] = []
    for want in lead_names:
        key = normalize_lead_name(want)
        if key in have:
            rows.append(record.signal[have[key]])
            units.append(record.units[have[key]])
            continue
        if derive_limb_leads and key in ("III", "aVR", "aVL", "aVF") and "I" in have and "II" in have:
            lead_i, lead_ii = record.signal[have["I"]], record.signal[have["II"]]
            derived = {
                "III": lead_ii - lead_i,
                "aVR": -(lead_i + lead_ii) / 2,
                "aVL": lead_i - lead_ii / 2,
                "aVF": lead_ii - lead_i / 2,
            }[key]
            rows.append(derived)
            units.append(record.units[have["I"]])
            continue
        raise InconsistentDataError(
            record.path, f"lead {want!r} missing (record has {record.lead_names})"
        )
    return ECGRecord(
        np.stack(rows).astype(np.float32), record.fs, tuple(normalize_lead_name(n) for n in lead_names),
        tuple(units), record.path,
    )


def resample_ecg(record: ECGRecord, target_fs: float) -> ECGRecord:
    """Resample to ``target_fs`` by polyphase filtering (``scipy.signal.resample_poly``,
    whose FIR low-pass at the lower Nyquist rate is the anti-aliasing filter)."""
    from scipy.signal import resample_poly

    if not target_fs > 0:
        raise ValueError(f"target_fs must be positive, got {target_fs!r}")
    ratio = Fraction(float(target_fs) / record.fs).limit_denominator(1000)
    if ratio == 1:
        return replace(record, fs=float(target_fs))
    out = resample_poly(
        record.signal.astype(np.float64), ratio.numerator, ratio.denominator, axis=1, padtype="line"
    )
    return replace(record, signal=out.astype(np.float32), fs=float(target_fs))


def bandpass_ecg(
    record: ECGRecord, low: float = 0.5, high: float = 40.0, order: int = 4
) -> ECGRecord:
    """Zero-phase Butterworth band-pass (``butter`` as second-order sections, applied
    forward and backward with ``sosfiltfilt``: the effective order is ``2 * order``)."""
    from scipy.signal import butter, sosfiltfilt

    nyq = record.fs / 2
    if not 0 < low < high < nyq:
        raise ValueError(f"need 0 < low < high < fs/2 = {nyq}, got low={low}, high={high}")
    sos = butter(order, [low, high], btype="bandpass", fs=record.fs, output="sos")
    out = sosfiltfilt(sos, record.signal.astype(np.float64), axis=1)
    return replace(record, signal=out.astype(np.float32))

