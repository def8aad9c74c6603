"""medmm.io.ecg: WFDB round trip against wfdb itself, the real DICOM waveform file
against pydicom, bad input -> medmm exceptions naming the file, record-level ops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file
from scipy import signal as sps

from medmm.demo.writers import write_wfdb
from medmm.io.ecg import (
    STANDARD_LEADS,
    ECGRecord,
    bandpass_ecg,
    normalize_lead_name,
    read_dicom_ecg,
    read_ecg,
    read_wfdb,
    resample_ecg,
    select_leads,
)
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError

DICOM_ECG = get_testdata_file("waveform_ecg.dcm")


def _signal(n_leads: int = 12, n: int = 5000, seed: int = 0) -> np.ndarray:
    """A smooth-ish multi-lead test signal in mV, within +-4 mV."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 500.0
    sig = np.stack(
        [
            rng.uniform(0.3, 2) * np.sin(2 * np.pi * rng.uniform(0.5, 20) * t + rng.uniform(0, 6))
            for _ in range(n_leads)
        ]
    )
    return (sig + rng.normal(0, 0.3, sig.shape)).clip(-4, 4)


def _assert_names_path(exc: MedmmInputError, path: Path) -> None:
    assert str(path) in str(exc)
    assert exc.path is not None and Path(exc.path) == Path(path)


# --------------------------------------------------------------------------- WFDB
@pytest.mark.parametrize("fmt,gain", [("16", 1000.0), ("16", 200.0), ("212", 200.0), ("32", 1e5)])
def test_wfdb_round_trip_matches_wfdb_reference(tmp_path, fmt, gain):
    sig = _signal()
    hea = write_wfdb(tmp_path / "rec_01", sig, 500, STANDARD_LEADS, fmt=fmt, adc_gain=gain)
    assert hea == tmp_path / "rec_01.hea" and hea.is_file()
    assert (tmp_path / "rec_01.dat").is_file()

    ref = wfdb.rdrecord(str(tmp_path / "rec_01"))  # independent reader
    assert ref.fmt == [fmt] * 12 and ref.adc_gain == [gain] * 12
    for path in (hea, tmp_path / "rec_01"):  # .hea path and path without extension
        rec = read_ecg(path)
        assert isinstance(rec, ECGRecord)
        assert rec.signal.dtype == np.float32 and rec.signal.shape == (12, 5000)
        assert rec.fs == 500.0
        assert rec.lead_names == STANDARD_LEADS
        assert rec.units == ("mV",) * 12
        assert Path(rec.path) == hea
        np.testing.assert_allclose(rec.signal, ref.p_signal.T.astype(np.float32), rtol=0, atol=0)
        # exact to the format's resolution: |error| <= 0.5 / adc_gain (+ float32 rounding)
        err = np.abs(rec.signal.astype(np.float64) - sig).max()
        assert err <= 0.5 / gain + 4 * np.finfo(np.float32).eps * 4


_FORMAT16_HEADERS = [  # (record line, signal lines with {f} for the data file): wfdb's read defaults
    ("r 3 500 1000", ["{f} 16 200(5)/mV 16 0 0 0 0 I", "{f} 16 0/uV 12 3 0 0 0 II", "{f} 16 1000.5(-3) 16 0 0 0 0 V1"]),
    ("r 3 500/1000(0) 1000", ["{f} 16 2.5e2(0)/V 16 0 0 0 0 aVR", "{f} 16 100(7)/nV 16 0 0 0 0 v2",
                              "{f} 16 200 16 -9 0 0 0 Lead III"]),
    ("r 3 360.5 1000 12:00:00 01/01/2000", ["{f} 16 1e3(-32767)/mV 16 0 0 0 0 V6", "{f} 16 7/mV 16 0 0 0 0 V5",
                                           "{f}   16   100(0)/mV   16   0   0   0   0   V4"]),
    ("r\t3\t250\t1000", ["{f}\t16\t200/mV 16 0 0 0 0 I", "{f} 16 200/mV 16 0 0 0 0 II",
                          "{f} 16 200/mV 16 0 0 0 0 III"]),
]


@pytest.mark.parametrize("record_line,signal_lines", _FORMAT16_HEADERS)
def test_format16_read_directly_equals_wfdb(tmp_path, monkeypatch, record_line, signal_lines):
    """A plain format-16 record is decoded without wfdb.rdrecord, and equals what
    wfdb.rdrecord reads bit for bit (p_signal, missing samples as NaN), in the record's
    units and converted to mV, with the data file longer than the header's length."""
    rng = np.random.default_rng(0)
    stored = rng.integers(-32768, 32768, (1200, 3), dtype=np.int16)
    stored[::97, 1] = -32768  # format 16's missing sample
    stored.tofile(tmp_path / "r.dat")
    (tmp_path / "r.hea").write_text(
        "\n".join([record_line] + [line.format(f="r.dat") for line in signal_lines]) + "\n# a comment\n")
    ref = wfdb.rdrecord(str(tmp_path / "r"))
    factors = np.array([{"mv": 1.0, "uv": 1e-3, "v": 1e3, "nv": 1e-6}[u.lower()] for u in ref.units])

    def _no_wfdb(*args, **kwargs):
        raise AssertionError("wfdb.rdrecord called on a plain format-16 record")

    monkeypatch.setattr(wfdb, "rdrecord", _no_wfdb)
    raw = read_ecg(tmp_path / "r.hea", to_millivolts=False, allow_nan=True)
    np.testing.assert_array_equal(raw.signal, ref.p_signal.T.astype(np.float32), strict=True)
    assert raw.units == tuple(ref.units) and raw.fs == float(ref.fs)
    assert raw.lead_names == tuple(normalize_lead_name(n) for n in ref.sig_name)
    mv = read_ecg(tmp_path / "r.hea", allow_nan=True)
    np.testing.assert_array_equal(mv.signal, (ref.p_signal * factors).T.astype(np.float32), strict=True)
    assert np.isnan(mv.signal[1, ::97]).all() and np.isfinite(mv.signal[0]).all()


def test_wfdb_lead_names_are_normalised_and_units_converted(tmp_path):
    sig = _signal(4, 1000)
    write_wfdb(tmp_path / "r", sig * 1000.0, 250, ["i", "AVR", "v1", "resp"], units="uV", adc_gain=1.0, fmt="32")
    rec = read_ecg(tmp_path / "r.hea")
    assert rec.lead_names == ("I", "aVR", "V1", "resp")
    assert rec.units == ("mV",) * 4
    np.testing.assert_allclose(rec.signal, sig, atol=0.5e-3 + 1e-6)
    raw = read_ecg(tmp_path / "r.hea", to_millivolts=False)
    assert raw.units == ("uV",) * 4
    np.testing.assert_allclose(raw.signal, np.round(sig * 1000.0), atol=1e-3)


def test_write_wfdb_rejects_bad_names_and_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="record name"):
        write_wfdb(tmp_path / "bad name.x", _signal(), 500, STANDARD_LEADS)
    with pytest.raises(ValueError, match="does not fit"):
        write_wfdb(tmp_path / "big", _signal() * 20, 500, STANDARD_LEADS)  # > 32.767 mV
    with pytest.raises(ValueError, match="lead names"):
        write_wfdb(tmp_path / "n", _signal(), 500, STANDARD_LEADS[:6])


def test_normalize_lead_name():
    assert normalize_lead_name("Lead I (Einthoven)") == "I"
    assert normalize_lead_name("Lead II") == "II"
    assert normalize_lead_name("Lead aVR") == "aVR"
    assert normalize_lead_name("AVL") == "aVL"
    assert normalize_lead_name("v6") == "V6"
    assert normalize_lead_name(" Lead V1 ") == "V1"
    assert normalize_lead_name("Pleth") == "Pleth"


# -------------------------------------------------------------------------- DICOM
def test_dicom_waveform_matches_pydicom():
    ds = pydicom.dcmread(DICOM_ECG)
    arr = ds.waveform_array(0)  # [samples, channels] in uV
    item = ds.WaveformSequence[0]
    rec = read_ecg(DICOM_ECG)
    assert rec.lead_names == STANDARD_LEADS  # "Lead I (Einthoven)" ... "Lead V6"
    assert rec.fs == float(item.SamplingFrequency) == 1000.0
    assert rec.signal.shape == (12, 10000) == arr.T.shape
    assert rec.units == ("mV",) * 12
    np.testing.assert_allclose(rec.signal, (arr.T * 1e-3).astype(np.float32), rtol=1e-6, atol=1e-7)
    raw = read_dicom_ecg(DICOM_ECG, to_millivolts=False)
    assert raw.units == ("uV",) * 12
    np.testing.assert_array_equal(raw.signal, arr.T.astype(np.float32))
    # a real ECG obeys Einthoven's law (to the file's quantisation)
    np.testing.assert_allclose(raw.lead("III"), raw.lead("II") - raw.lead("I"), atol=5.0)


def test_dicom_median_beat_group():
    ds = pydicom.dcmread(DICOM_ECG)
    rec = read_dicom_ecg(DICOM_ECG, group="MEDIAN BEAT")
    assert rec.signal.shape == (12, 1200)
    np.testing.assert_allclose(rec.signal, ds.waveform_array(1).T * 1e-3, rtol=1e-6, atol=1e-7)
    assert read_dicom_ecg(DICOM_ECG, group=1).signal.shape == (12, 1200)
    with pytest.raises(InconsistentDataError, match="no multiplex group"):
        read_dicom_ecg(DICOM_ECG, group="NOPE")


# ---------------------------------------------------------------------- bad input
@pytest.fixture
def good_record(tmp_path) -> Path:
    return write_wfdb(tmp_path / "good", _signal(), 500, STANDARD_LEADS)


def test_missing_dat_raises(good_record):
    dat = good_record.with_suffix(".dat")
    dat.unlink()
    with pytest.raises(CorruptFileError) as ei:
        read_ecg(good_record)
    _assert_names_path(ei.value, dat)


@pytest.mark.parametrize("keep_bytes", [50001, 48000, 24])  # mid-frame, whole frames, tiny
def test_truncated_dat_raises(good_record, keep_bytes):
    dat = good_record.with_suffix(".dat")
    data = dat.read_bytes()
    assert len(data) == 5000 * 12 * 2
    dat.write_bytes(data[:keep_bytes])
    with pytest.raises(InconsistentDataError, match="truncated") as ei:
        read_ecg(good_record)
    _assert_names_path(ei.value, dat)


def test_header_not_wfdb_raises(tmp_path):
    hea = tmp_path / "junk.hea"
    hea.write_text("this is not a WFDB header\n")
    with pytest.raises(CorruptFileError, match="not a valid WFDB header") as ei:
        read_ecg(hea)
    _assert_names_path(ei.value, hea)
    empty = tmp_path / "empty.hea"
    empty.write_text("")
    with pytest.raises(CorruptFileError) as ei:
        read_ecg(tmp_path / "empty")
    _assert_names_path(ei.value, empty)


def test_nan_in_signal_raises_unless_allowed(tmp_path):
    sig = _signal()
    sig[3, 100:110] = np.nan
    hea = write_wfdb(tmp_path / "withnan", sig, 500, STANDARD_LEADS)
    with pytest.raises(InconsistentDataError, match="NaN") as ei:
        read_ecg(hea)
    _assert_names_path(ei.value, hea)
    assert "aVR" in str(ei.value)
    rec = read_ecg(hea, allow_nan=True)
    ref = wfdb.rdrecord(str(tmp_path / "withnan")).p_signal.T
    np.testing.assert_array_equal(np.isnan(rec.signal), np.isnan(ref))
    assert np.isnan(rec.signal[3, 100:110]).all() and np.isnan(rec.signal).sum() == 10


def test_zero_leads_raises(tmp_path):
    hea = tmp_path / "zero.hea"
    hea.write_text("zero 0 500 5000\n")
    with pytest.raises(InconsistentDataError, match="zero leads") as ei:
        read_ecg(hea)
    _assert_names_path(ei.value, hea)


def test_non_voltage_unit_raises_when_converting(tmp_path):
    hea = write_wfdb(tmp_path / "resp", _signal(2, 500), 100, ["I", "resp"], units=["mV", "L/s"])
    with pytest.raises(InconsistentDataError, match="not a voltage") as ei:
        read_ecg(hea)
    _assert_names_path(ei.value, hea)
    assert read_ecg(hea, to_millivolts=False).units == ("mV", "L/s")


def test_unrecognised_and_missing_files_raise(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(CorruptFileError) as ei:
        read_ecg(txt)
    _assert_names_path(ei.value, txt)
    with pytest.raises(CorruptFileError):
        read_ecg(tmp_path / "nothing_here")
    with pytest.raises(CorruptFileError, match="header file not found"):
        read_wfdb(tmp_path / "nothing_here.hea")


def test_dicom_bad_inputs(tmp_path):
    ct = Path(get_testdata_file("CT_small.dcm"))
    with pytest.raises(CorruptFileError, match="no Waveform Sequence") as ei:
        read_ecg(ct)
    _assert_names_path(ei.value, ct)

    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptFileError) as ei:
        read_ecg(fake)
    _assert_names_path(ei.value, fake)

    ds = pydicom.dcmread(DICOM_ECG)
    item = ds.WaveformSequence[0]
    item.WaveformData = item.WaveformData[: len(item.WaveformData) // 2]
    short = tmp_path / "short.dcm"
    ds.save_as(short)
    with pytest.raises(InconsistentDataError, match="Waveform Data holds") as ei:
        read_ecg(short)
    _assert_names_path(ei.value, short)


# ------------------------------------------------------------------- record ops
def test_ecgrecord_is_validated_and_read_only():
    sig = np.zeros((2, 10), dtype=np.float32)
    rec = ECGRecord(sig, 100, ("I", "II"), ("mV", "mV"))
    assert sig.flags.writeable  # the caller's array is not frozen
    with pytest.raises(ValueError):
        rec.signal[0, 0] = 1.0
    assert rec.n_leads == 2 and rec.n_samples == 10 and rec.duration_s == pytest.approx(0.1)
    with pytest.raises(ValueError):
        ECGRecord(sig, 100, ("I",), ("mV", "mV"))
    with pytest.raises(ValueError):
        ECGRecord(sig[0], 100, ("I",), ("mV",))
    with pytest.raises(KeyError):
        rec.lead("V1")


def test_resample_ecg_is_anti_aliased():
    fs = 500
    t = np.arange(5000) / fs
    slow = np.sin(2 * np.pi * 5 * t)
    hum = np.sin(2 * np.pi * 60 * t)  # above the 50 Hz Nyquist of 100 Hz
    rec = ECGRecord(np.stack([slow, hum]), fs, ("I", "II"), ("mV", "mV"))
    out = resample_ecg(rec, 100)
    assert out.fs == 100.0 and out.signal.shape == (2, 1000) and out.signal.dtype == np.float32
    ref = sps.resample_poly(np.stack([slow, hum]), 1, 5, axis=1, padtype="line")
    np.testing.assert_allclose(out.signal, ref, atol=1e-6)
    inner = slice(50, -50)
    np.testing.assert_allclose(out.signal[0, inner], np.sin(2 * np.pi * 5 * t[::5])[inner], atol=0.01)
    assert np.abs(out.signal[1, inner]).max() < 0.05  # 60 Hz does not alias to 40 Hz
    up = resample_ecg(out, 250)
    assert up.signal.shape == (2, 2500)


def test_bandpass_ecg_zero_phase():
    fs = 500
    t = np.arange(5000) / fs
    wander = 1.0 * np.sin(2 * np.pi * 0.1 * t)
    pulse = np.exp(-0.5 * ((t - 5.0) / 0.01) ** 2)  # a QRS-like bump at 5 s
    rec = ECGRecord(np.stack([wander + pulse]), fs, ("II",), ("mV",))
    out = bandpass_ecg(rec, 0.5, 40.0)
    y = out.signal[0]
    assert abs(int(np.argmax(y)) - 2500) <= 1  # zero phase: the peak does not move
    mask = np.abs(t - 5.0) > 0.5
    assert np.abs(y[mask][250:-250]).max() < 0.1  # wander removed
    with pytest.raises(ValueError):
        bandpass_ecg(rec, 40.0, 0.5)


def test_select_leads_derives_limb_leads():
    from medmm.demo.ecg_synth import synthesize_ecg

    full = synthesize_ecg({}, np.random.default_rng(0))
    keep = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1..V6 (deepfake-ecg style)
    rec8 = ECGRecord(full[keep], 500, tuple(STANDARD_LEADS[i] for i in keep), ("mV",) * 8)
    rec12 = select_leads(rec8)
    assert rec12.lead_names == STANDARD_LEADS
    np.testing.assert_allclose(rec12.signal, full, atol=1e-6)
    with pytest.raises(InconsistentDataError, match="missing"):
        select_leads(rec8, ("I", "V7"))
