"""The fuzz cases, per format: mutated real files (byte flips, truncations, splices and
header-field edits) and, for each, what a valid read must look like.

A format is a function ``(workdir) -> Spec``: ``make_case(i, rng)`` writes case ``i``'s
file(s) under ``workdir`` and returns the read call; ``check(i, result)`` returns what is
wrong with a result the reader accepted (``None`` when it is what the mutated file's own
header declares, checked with pydicom / nibabel / wfdb / tifffile, or for JPEG / PNG with
the header parsed here). Case ``i`` of a format
always draws the same mutation (``np.random.default_rng([seed, i])``), so a case id in a
failure message reproduces it. ``fuzz_worker.py`` runs these in a limited subprocess.
"""

from __future__ import annotations

import copy
import gzip
import io
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile
import wfdb
from nibabel.testing import data_path
from PIL import Image
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from skimage.data import immunohistochemistry

from medmm.demo.writers import write_dicom_series, write_pyramidal_tiff, write_wfdb
from medmm.io import read_wsi
from medmm.io.dicom import read_dicom
from medmm.io.ecg import STANDARD_LEADS, read_ecg
from medmm.io.raster import read_raster
from medmm.io.volume import read_dicom_series, read_nifti


@dataclass
class Spec:
    make_case: Callable[[int, np.random.Generator], Callable[[], object]]
    check: Callable[[int, object], str | None]
    seed: int


# ------------------------------------------------------------------- mutations


def _flip(data: bytes, rng: np.random.Generator, structure: tuple[int, int]) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        lo, hi = structure if rng.random() < 0.75 else (0, len(buf))
        pos = int(rng.integers(lo, max(hi, lo + 1)))
        if pos < len(buf):
            buf[pos] ^= int(rng.integers(1, 256))
    return bytes(buf)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _splice(data: bytes, rng: np.random.Generator, structure: tuple[int, int]) -> bytes:
    """Delete a span, or insert random bytes, inside the structural part."""
    lo, hi = structure
    pos = int(rng.integers(lo, max(hi, lo + 1)))
    span = int(rng.integers(1, 64))
    if rng.random() < 0.5:
        return data[:pos] + data[pos + span:]
    return data[:pos] + rng.integers(0, 256, span, dtype=np.uint8).tobytes() + data[pos:]


def _generic(data: bytes, rng: np.random.Generator, structure: tuple[int, int]) -> bytes:
    r = rng.random()
    if r < 0.5:
        return _flip(data, rng, structure)
    if r < 0.75:
        return _truncate(data, rng)
    return _splice(data, rng, structure)


_WEIRD_INTS = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 4096, 32767, 65535]
_WEIRD_DS = ["0", "-1", "1e308", "-1e308", "nan", "inf", "1e-300", "abc", "", "3.5", "-1024", "65536"]
_WEIRD_IS = ["0", "-1", "2", "3", "10", "1000000", "abc", "", "1.5"]


def _dicom_edit(ds, rng: np.random.Generator, extra: dict[str, list]) -> None:
    """One header-field edit on a pydicom dataset (in place)."""
    config.settings.writing_validation_mode = config.IGNORE
    fields: dict[str, list] = {
        "Rows": _WEIRD_INTS, "Columns": _WEIRD_INTS, "BitsAllocated": _WEIRD_INTS,
        "BitsStored": _WEIRD_INTS, "HighBit": _WEIRD_INTS, "PixelRepresentation": [0, 1, 2, 255],
        "SamplesPerPixel": [0, 1, 2, 3, 4], "PlanarConfiguration": [0, 1, 2],
        "NumberOfFrames": _WEIRD_IS, "RescaleSlope": _WEIRD_DS, "RescaleIntercept": _WEIRD_DS,
        "WindowCenter": _WEIRD_DS, "WindowWidth": _WEIRD_DS, "PixelSpacing": ["0\\0", "-1\\1", "nan\\1", "abc", "1"],
        "PhotometricInterpretation": ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL_422", "YBR_FULL", "", "FOO"],
        "TransferSyntaxUID": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
                              "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.90", "1.2.3", ""],
        "PixelData": ["truncate", "extend", "empty", "delete"],
        **extra,
    }
    key = list(fields)[int(rng.integers(len(fields)))]
    value = fields[key][int(rng.integers(len(fields[key])))]
    if key == "TransferSyntaxUID":
        ds.file_meta.TransferSyntaxUID = UID(value)
        ds.medmm_fuzz_lying_syntax = True  # written by _dicom_bytes with the body as it was
        return
    if key == "PixelData":
        if "PixelData" not in ds:
            return
        data = ds.PixelData
        if value == "truncate":
            ds.PixelData = data[: int(rng.integers(0, len(data)))]
        elif value == "extend":
            ds.PixelData = data + rng.integers(0, 256, int(rng.integers(2, 4096)) * 2, dtype=np.uint8).tobytes()
        elif value == "empty":
            ds.PixelData = b""
        else:
            del ds.PixelData
        return
    if value == "delete" or rng.random() < 0.08:
        if key in ds:
            delattr(ds, key)
        return
    _set(ds, key, value)


def _set(ds, key: str, value) -> None:
    """Set a field even to a value its VR forbids (stored then as text, VR LO)."""
    try:
        setattr(ds, key, value)
    except Exception:  # noqa: BLE001 - pydicom refuses the value: store it as text
        tag = tag_for_keyword(key)
        if tag in ds:
            del ds[tag]
        ds.add_new(tag, "LO", str(value))


def _dicom_bytes(ds) -> bytes:
    """Serialise an edited dataset. A transfer-syntax edit makes the file meta lie: the
    body is written in the encoding it was read with, the meta names the new syntax."""
    lying = getattr(ds, "medmm_fuzz_lying_syntax", False)
    if lying:
        del ds.medmm_fuzz_lying_syntax
    body = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        implicit, little = ds.original_encoding
        meta = ds.file_meta
        if lying:
            ds.file_meta = copy.deepcopy(meta)
            ds.file_meta.TransferSyntaxUID = ds.original_syntax
        pydicom.dcmwrite(body, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
        if not lying:
            return body.getvalue()
        data = body.getvalue()
        group_length = int.from_bytes(data[140:144], "little")
        fake = DicomBytesIO()
        fake.is_little_endian, fake.is_implicit_VR = True, False
        write_file_meta_info(fake, meta, enforce_standard=False)
        return data[:132] + fake.getvalue() + data[144 + group_length:]


def _pixel_offset(path: str) -> int:
    data = Path(path).read_bytes()
    ds = pydicom.dcmread(path)
    return data.rfind(bytes(ds.PixelData[:256])) if "PixelData" in ds else len(data)


# ------------------------------------------------------------------- DICOM image

_IMAGE_SOURCES = ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm",
                  "MR_small_bigendian.dcm", "emri_small.dcm"]


def _expected_image_shape(path: Path) -> tuple[int, ...] | None:
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames") or 1)
    shape = ((frames,) if frames > 1 else ()) + (int(ds.Rows), int(ds.Columns))
    if int(ds.get("SamplesPerPixel") or 1) == 3 or str(ds.PhotometricInterpretation) == "PALETTE COLOR":
        shape += (3,)
    return shape


def dicom_image(tmp_path: Path) -> Spec:
    sources = []
    for name in _IMAGE_SOURCES:
        path = get_testdata_file(name)
        ds = pydicom.dcmread(path)
        ds.original_syntax = ds.file_meta.TransferSyntaxUID
        sources.append((Path(path).read_bytes(), ds, _pixel_offset(path)))
    target = tmp_path / "image.dcm"

    def make_case(i, rng):
        data, ds, pix = sources[i % len(sources)]
        if rng.random() < 0.45:
            edited = copy.deepcopy(ds)
            _dicom_edit(edited, rng, {})
            try:
                target.write_bytes(_dicom_bytes(edited))
            except ValueError:  # pydicom cannot write that edit (bare bytes, compressed syntax)
                target.write_bytes(_truncate(data, rng))
        else:
            target.write_bytes(_generic(data, rng, (0, pix)))
        return lambda: read_dicom(target)

    def check(i, image):
        shape = _expected_image_shape(target)
        if image.pixels.shape != shape:
            return f"pixels {image.pixels.shape}, header declares {shape}"
        if not np.all(np.isfinite(image.pixels)):
            return "non-finite pixels"
        return None

    return Spec(make_case, check, seed=101)


# ------------------------------------------------------------------- DICOM series


def _series_slices(tmp_path: Path) -> list[bytes]:
    """A 4-slice oblique CT series from the real CT_small slice, as bytes per file."""
    ct = read_dicom(get_testdata_file("CT_small.dcm")).pixels[::4, ::4]  # 32 x 32 HU
    vol = np.stack([np.rot90(ct, k) for k in range(4)], axis=-1).transpose(1, 0, 2)
    aff = np.diag([-0.7, -0.7, 2.5, 1.0])
    t = np.deg2rad(20)
    aff[:3, :3] = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]) @ aff[:3, :3]
    paths = write_dicom_series(vol, aff, tmp_path / "source")
    return [p.read_bytes() for p in paths]


def dicom_series(tmp_path: Path) -> Spec:
    slices = _series_slices(tmp_path)
    parsed = [pydicom.dcmread(io.BytesIO(b)) for b in slices]
    for ds in parsed:
        ds.original_syntax = ds.file_meta.TransferSyntaxUID
    pix = len(slices[0]) - len(parsed[0].PixelData)
    folder = tmp_path / "series"
    folder.mkdir()
    series_fields = {
        "ImagePositionPatient": ["nan\\0\\0", "0\\0\\0", "1e308\\0\\0", "abc", "1\\2", "0\\0\\2.5"],
        "ImageOrientationPatient": ["0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "1\\0\\0\\0\\1\\0", "nan\\0\\0\\0\\1\\0", "1\\0"],
        "SeriesInstanceUID": ["1.2.3.4", ""], "SliceThickness": _WEIRD_DS,
    }

    def make_case(i, rng):
        for f in folder.iterdir():
            f.unlink()
        victim = int(rng.integers(len(slices)))
        for k, data in enumerate(slices):
            if k != victim:
                (folder / f"s{k}.dcm").write_bytes(data)
        r = rng.random()
        if r < 0.05:
            pass  # a slice missing
        elif r < 0.1:
            (folder / f"s{victim}.dcm").write_bytes(slices[victim])
            (folder / "dup.dcm").write_bytes(slices[(victim + 1) % len(slices)])
        elif r < 0.55:
            edited = copy.deepcopy(parsed[victim])
            _dicom_edit(edited, rng, series_fields)
            (folder / f"s{victim}.dcm").write_bytes(_dicom_bytes(edited))
        else:
            (folder / f"s{victim}.dcm").write_bytes(_generic(slices[victim], rng, (0, pix)))
        return lambda: read_dicom_series(folder)

    def check(i, vol):
        images = []
        for f in sorted(folder.iterdir()):
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            except Exception:  # noqa: BLE001, S112 - medmm skips non-DICOM files in a folder
                continue
            if "Rows" in ds and "Columns" in ds:
                images.append(ds)
        shape = (int(images[0].Columns), int(images[0].Rows), len(images))
        if vol.array.shape != shape:
            return f"array {vol.array.shape}, the {len(images)} images declare {shape}"
        if not np.all(np.isfinite(vol.array)) or abs(np.linalg.det(vol.affine[:3, :3])) < 1e-6:
            return "non-finite voxels or singular affine"
        return None

    return Spec(make_case, check, seed=202)


# ------------------------------------------------------------------- NIfTI


def _nifti_sources(tmp_path: Path) -> list[tuple[str, bytes]]:
    anat = Path(data_path) / "anatomical.nii"
    img = nib.load(anat)
    gz = tmp_path / "anat_crop.nii.gz"
    nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2], img.affine, img.header).to_filename(gz)
    return [(".nii", anat.read_bytes()), (".nii.gz", gz.read_bytes())]


def _nifti_edit(data: bytes, rng: np.random.Generator) -> bytes:
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(data[:348]), check=False)
    arr = hdr.structarr
    choices = {
        "dim": lambda: (int(rng.integers(8)), int(rng.choice([0, -1, 1, 2, 3, 4, 5, 7, 8, 1000, 32767]))),
        "pixdim": lambda: (int(rng.integers(8)), float(rng.choice([0, -1, np.nan, np.inf, 1e30, 0.5]))),
        "datatype": lambda: int(rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 256, 512, 768, 1536, 2304])),
        "bitpix": lambda: int(rng.choice([0, 1, 8, 16, 33, 64])),
        "vox_offset": lambda: float(rng.choice([0, 1, 348, 352, 1e9, -1, np.nan])),
        "scl_slope": lambda: float(rng.choice([np.nan, 0, np.inf, 1e30, 1e38, -2])),
        "scl_inter": lambda: float(rng.choice([np.nan, np.inf, 1e30, -1024])),
        "qform_code": lambda: int(rng.choice([0, 1, 2, 4, 255])),
        "sform_code": lambda: int(rng.choice([0, 1, 2, 4, 255])),
        "srow_x": lambda: rng.choice([0.0, np.nan, 1e30]) * np.ones(4),
        "srow_y": lambda: rng.choice([0.0, np.nan, 1e30]) * np.ones(4),
        "quatern_b": lambda: float(rng.choice([np.nan, 2.0, 1.0, -1.0])),
        "sizeof_hdr": lambda: int(rng.choice([0, 540, 347, 1 << 24])),
        "magic": lambda: rng.choice([b"n+2\x00", b"xxxx", b"ni1\x00", b""]),
    }
    key = list(choices)[int(rng.integers(len(choices)))]
    value = choices[key]()
    if key in ("dim", "pixdim"):
        arr[key][value[0]] = value[1]
    else:
        arr[key] = value
    return arr.tobytes() + data[348:]


def _nifti(tmp_path: Path, gz: bool, seed: int) -> Spec:
    suffix, data = _nifti_sources(tmp_path)[int(gz)]
    target = tmp_path / f"case{suffix}"

    def make_case(i, rng):
        r = rng.random()
        if gz and r < 0.5:  # edit the header inside the gzip stream
            target.write_bytes(gzip.compress(_nifti_edit(gzip.decompress(data), rng), compresslevel=1))
        elif r < 0.5:
            target.write_bytes(_nifti_edit(data, rng))
        elif gz and r < 0.6:  # a valid gzip stream shorter than its header declares
            raw = gzip.decompress(data)
            target.write_bytes(gzip.compress(raw[: int(rng.integers(348, len(raw)))], compresslevel=1))
        else:
            target.write_bytes(_generic(data, rng, (0, 352)))
        return lambda: read_nifti(target)

    def check(i, vol):
        shape = tuple(int(s) for s in nib.load(vol.path).shape)[:3]
        if vol.array.shape != shape:
            return f"array {vol.array.shape}, header declares {shape}"
        if not np.all(np.isfinite(vol.array)) or abs(np.linalg.det(vol.affine[:3, :3])) < 1e-9:
            return "non-finite voxels or singular affine"
        return None

    return Spec(make_case, check, seed=seed)


def nifti(tmp_path: Path) -> Spec:
    return _nifti(tmp_path, gz=False, seed=303)


def nifti_gz(tmp_path: Path) -> Spec:
    return _nifti(tmp_path, gz=True, seed=313)


# ------------------------------------------------------------------- WFDB


_WFDB_TOKENS = ["0", "-1", "1", "999999999", "1e30", "abc", "", "nan", "16x", "65536", "212", "8", "80",
                "310", "24", "32", "1000/uV", "/mV", "0/mV", "-5/mV", "1e-300(0)/mV", "500", "12", "x.dat", "(0)",
                "16+24"]


def _wfdb_header_edit(text: str, rng: np.random.Generator) -> str:
    lines = text.splitlines()
    r = rng.random()
    k = int(rng.integers(len(lines)))
    if r < 0.1:
        del lines[k]
    elif r < 0.15:
        lines.insert(k, lines[k])
    else:
        tokens = lines[k].split(" ")
        t = int(rng.integers(len(tokens)))
        if rng.random() < 0.15:
            del tokens[t]
        else:
            tokens[t] = _WFDB_TOKENS[int(rng.integers(len(_WFDB_TOKENS)))]
        lines[k] = " ".join(tokens)
    return "\n".join(lines) + "\n"


def wfdb_record(tmp_path: Path) -> Spec:
    # a real 12-lead ECG (pydicom's waveform_ecg.dcm), 2 s of it, written by wfdb
    ecg = read_ecg(get_testdata_file("waveform_ecg.dcm"))
    src = write_wfdb(tmp_path / "src" / "rec", ecg.signal[:, :2000], ecg.fs, STANDARD_LEADS, fmt="16")
    hea_text, dat = src.read_text(), src.with_suffix(".dat").read_bytes()
    case = tmp_path / "case"
    case.mkdir()

    def make_case(i, rng):
        text, data = hea_text, dat
        r = rng.random()
        if r < 0.5:
            text = _wfdb_header_edit(text, rng)
        elif r < 0.75:
            data = _generic(data, rng, (0, len(data)))
        else:
            text = _generic(text.encode(), rng, (0, len(text))).decode("latin-1")
        (case / "rec.hea").write_text(text, encoding="latin-1")
        (case / "rec.dat").write_bytes(data)
        return lambda: read_ecg(case / "rec.hea")

    def check(i, rec):
        header = wfdb.rdheader(str(case / "rec"))
        if header.sig_len is None or header.fs is None:
            return "medmm read a record whose header wfdb cannot fully parse"
        shape = (int(header.n_sig), int(header.sig_len))
        if rec.signal.shape != shape:
            return f"signal {rec.signal.shape}, header declares {shape}"
        if not np.isclose(rec.fs, float(header.fs)):
            return f"fs {rec.fs}, header declares {header.fs}"
        if not np.all(np.isfinite(rec.signal)):
            return "non-finite samples"
        return None

    return Spec(make_case, check, seed=404)


# ------------------------------------------------------------------- DICOM waveform ECG


def dicom_ecg(tmp_path: Path) -> Spec:
    # the real 12-lead waveform file, its rhythm group cut to 2 s to keep cases small
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    rhythm = ds.WaveformSequence[0]
    rhythm.NumberOfWaveformSamples = 2000
    rhythm.WaveformData = rhythm.WaveformData[: 2000 * 12 * 2]  # 16-bit, channels interleaved
    del ds.WaveformAnnotationSequence  # 77 nested items medmm never reads: they only cost parse time
    data = _dicom_bytes(ds)
    wave_at = data.find(bytes(rhythm.WaveformData[:256]))
    target = tmp_path / "ecg.dcm"

    def edit(rng):
        # edit the one parsed copy, serialise, then undo (re-parsing a 12-lead file per case
        # costs more than the whole read under test)
        item = ds.WaveformSequence[int(rng.integers(len(ds.WaveformSequence)))]
        chdef = item.ChannelDefinitionSequence[int(rng.integers(len(item.ChannelDefinitionSequence)))]
        units = chdef.ChannelSensitivityUnitsSequence[0]
        # pydicom edits a value in place: keep copies of the elements themselves
        saved = [(d, {tag: copy.copy(el) for tag, el in d.items()}) for d in (item, chdef, units)]
        channels = list(item.ChannelDefinitionSequence)
        try:
            return _edit_waveform(ds, item, chdef, units, rng)
        finally:
            for d, elements in saved:
                for tag in list(d.keys()):
                    del d[tag]
                for tag, element in elements.items():
                    d[tag] = element
            item.ChannelDefinitionSequence = channels

    def _edit_waveform(e, item, chdef, units, rng):
        choice = int(rng.integers(10))
        if choice == 0:
            item.NumberOfWaveformChannels = int(rng.choice([0, 1, 11, 13, 255, 65535]))
        elif choice == 1:
            item.NumberOfWaveformSamples = int(rng.choice([0, 1, 1999, 2001, 10**6, 2**32 - 1]))
        elif choice == 2:
            item.WaveformBitsAllocated = int(rng.choice([0, 8, 12, 32, 64]))
        elif choice == 3:
            item.WaveformSampleInterpretation = str(rng.choice(["SB", "UB", "US", "MB", "AB", "XX", ""]))
        elif choice == 4:
            _set(item, "SamplingFrequency", str(rng.choice(_WEIRD_DS)))
        elif choice == 5:
            _set(chdef, "ChannelSensitivity", str(rng.choice(_WEIRD_DS)))
        elif choice == 6:
            units.CodeValue = str(rng.choice(["V", "XX", "", "mmHg"]))
        elif choice == 7:
            del item.ChannelDefinitionSequence[int(rng.integers(len(item.ChannelDefinitionSequence)))]
        elif choice == 8:
            wd = item.WaveformData
            item.WaveformData = wd[: int(rng.integers(0, len(wd)))]
        else:
            item.MultiplexGroupLabel = str(rng.choice(["", "RHYTHM", "MEDIAN BEAT", "X"]))
        return _dicom_bytes(e)

    def make_case(i, rng):
        target.write_bytes(edit(rng) if rng.random() < 0.5 else _generic(data, rng, (0, wave_at)))
        if i % 100 == 99:  # the undo really restores the source
            assert _dicom_bytes(ds) == data, f"case {i}: an edit leaked into the source"
        return lambda: read_ecg(target)

    def check(i, rec):
        d = pydicom.dcmread(str(target))
        labels = [str(it.get("MultiplexGroupLabel", "")).strip() for it in d.WaveformSequence]
        item = d.WaveformSequence[labels.index("RHYTHM") if "RHYTHM" in labels else 0]
        shape = (int(item.NumberOfWaveformChannels), int(item.NumberOfWaveformSamples))
        if rec.signal.shape != shape:
            return f"signal {rec.signal.shape}, header declares {shape}"
        if not np.all(np.isfinite(rec.signal)) or not rec.fs > 0:
            return "non-finite samples or rate"
        return None

    return Spec(make_case, check, seed=505)


# ------------------------------------------------------------------- TIFF / WSI

_TIFF_TAGS = {"ImageWidth": 256, "ImageLength": 257, "TileWidth": 322, "TileLength": 323,
              "TileOffsets": 324, "TileByteCounts": 325, "SamplesPerPixel": 277, "BitsPerSample": 258,
              "Compression": 259, "NewSubfileType": 254}
_WEIRD_LONGS = [0, 1, 15, 16, 17, 255, 256, 257, 512, 1023, 100000, 2**31 - 1, 2**32 - 1]


def _tiff_edit(data: bytes, entries: list[tuple[int, int, int]], rng: np.random.Generator) -> bytes:
    """Overwrite one IFD entry's value (or one element of its array) with a weird LONG."""
    buf = bytearray(data)
    entry, _code, count = entries[int(rng.integers(len(entries)))]
    value = int(rng.choice(_WEIRD_LONGS))
    if count == 1 or rng.random() < 0.3:
        buf[entry + 2:entry + 4] = struct.pack("<H", 4)  # type LONG
        buf[entry + 4:entry + 8] = struct.pack("<I", 1 if count == 1 else int(rng.choice([1, count - 1, count + 1])))
        buf[entry + 8:entry + 12] = struct.pack("<I", value)
    else:  # one element of an out-of-line array (offsets / byte counts)
        at = struct.unpack("<I", bytes(buf[entry + 8:entry + 12]))[0] + 4 * int(rng.integers(count))
        buf[at:at + 4] = struct.pack("<I", value)
    return bytes(buf)


def tiff_wsi(tmp_path: Path) -> Spec:
    # a real IHC image (scikit-image) as a 3-level tiled pyramid, 64-pixel tiles
    source = write_pyramidal_tiff(tmp_path / "source.tiff", immunohistochemistry()[:256, :256], mpp=0.25,
                                  n_levels=3, tile=64)
    data = source.read_bytes()
    entries = []
    with tifffile.TiffFile(source) as tif:
        for page in tif.pages:
            for tag in page.tags:
                if tag.code in _TIFF_TAGS.values():
                    entries.append((tag.offset, tag.code, tag.count))
        ifd_end = max(tag.offset + 12 for page in tif.pages for tag in page.tags)
    target = tmp_path / "case.tiff"

    def make_case(i, rng):
        target.write_bytes(_tiff_edit(data, entries, rng) if rng.random() < 0.5 else _generic(data, rng, (0, ifd_end)))

        def read():
            with read_wsi(target) as slide:
                level = slide.level_count - 1
                return slide.level_dimensions, slide.read_level(level)

        return read

    def check(i, result):
        dims, pixels = result
        w, h = dims[-1]
        if pixels.shape != (h, w, 3):
            return f"level pixels {pixels.shape}, level declares {(h, w, 3)}"
        with tifffile.TiffFile(target) as tif:
            pages = [p for p in tif.pages if (p.imagewidth, p.imagelength) == (w, h)]
            if not pages:
                return f"no TIFF image of the level's size {w}x{h}"
            try:
                truth = pages[0].asarray()
            except Exception as exc:  # noqa: BLE001 - tifffile cannot decode it: medmm should not have either
                return f"read a level that tifffile cannot decode ({type(exc).__name__}: {exc})"
        if truth.shape != pixels.shape or not np.array_equal(truth, pixels):
            return "level pixels differ from the TIFF's own tile data"
        return None

    return Spec(make_case, check, seed=606)


# ------------------------------------------------------------------- JPEG / PNG


def _radiograph() -> np.ndarray:
    """A real chest radiograph (pydicom's uncompressed CR RG1_UNCR), 1955 x 1841 cut to
    about 65 x 61 (every 30th pixel), scaled to 0..1."""
    pixels = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array[::30, ::30].astype(np.float64)
    return (pixels - pixels.min()) / (pixels.max() - pixels.min())


def _encoded(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **save)
    return buf.getvalue()


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset of the length field, type, length) of each chunk, as far as they parse."""
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I", data[at:at + 4])[0], data[at + 4:at + 8]
        chunks.append((at, kind, length))
        if kind == b"IEND":
            break
        at += 12 + length
    return chunks


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


_IHDR_FIELDS = {  # name -> (offset in the IHDR body, struct format, weird values)
    "width": (0, ">I", [0, 1, 7, 60, 62, 65, 66, 2**16, 2**31 - 1, 2**32 - 1]),
    "height": (4, ">I", [0, 1, 7, 64, 66, 67, 2**16, 2**31 - 1, 2**32 - 1]),
    "bit depth": (8, "B", [0, 1, 2, 4, 8, 16, 3, 32, 255]),
    "colour type": (9, "B", [0, 1, 2, 3, 4, 5, 6, 7, 255]),
    "compression": (10, "B", [1, 255]), "filter": (11, "B", [1, 255]), "interlace": (12, "B", [1, 2, 255]),
}


def _png_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """One structural edit: an IHDR field (its CRC recomputed, mostly), a chunk's length
    field, or a chunk dropped, repeated or moved."""
    chunks = _png_chunks(data)
    r = rng.random()
    if r < 0.5:
        at, _, length = chunks[0]
        body = bytearray(data[at + 8:at + 8 + length])
        offset, fmt, values = list(_IHDR_FIELDS.values())[int(rng.integers(len(_IHDR_FIELDS)))]
        struct.pack_into(fmt, body, offset, int(rng.choice(values)))
        chunk = _png_chunk(b"IHDR", bytes(body))
        if rng.random() < 0.2:  # and a CRC that no longer matches
            chunk = chunk[:-4] + bytes(4)
        return data[:at] + chunk + data[at + 12 + length:]
    at, _, length = chunks[int(rng.integers(len(chunks)))]
    whole = data[at:at + 12 + length]
    if r < 0.7:
        value = int(rng.choice([0, 1, length - 1, length + 1, 2**31 - 1, 2**32 - 1]))
        return data[:at] + struct.pack(">I", value % 2**32) + data[at + 4:]
    if r < 0.8:
        return data[:at] + data[at + 12 + length:]
    if r < 0.9:
        return data[:at] + whole + data[at:]
    return data[:8] + whole + data[8:at] + data[at + 12 + length:]  # moved to the front


def _png_header(path: Path) -> tuple[tuple[int, int], int] | None:
    """((rows, columns), bit depth medmm should report) from the first IHDR chunk."""
    data = path.read_bytes()
    ihdr = next(((at, length) for at, kind, length in _png_chunks(data) if kind == b"IHDR"), None)
    if ihdr is None or ihdr[1] < 13:
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[ihdr[0] + 8:ihdr[0] + 18])
    return (height, width), 16 if (depth, colour) == (16, 0) else 8


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset of the 0xFF, marker, length) of each marker segment before the scan data;
    bytes between segments are skipped, as Pillow and libjpeg skip them."""
    segments, at = [], 2
    while at + 4 <= len(data):
        marker = data[at + 1]
        if data[at] != 0xFF or marker in (0x00, 0xFF):  # stray, stuffed or fill byte
            at += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length field
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        segments.append((at, marker, length))
        if marker == 0xDA:
            break
        at += 2 + length
    return segments


_JPEG_BYTES = [0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 17, 0x11, 0x22, 0x41, 0x44, 0x88, 0xF0, 0xFF]


def _jpeg_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """One structural edit: a frame dimension, a byte of a header segment (precision,
    component count, sampling factors, table ids, spectral selection, table values) or a
    segment length, a segment dropped or repeated, or a restart interval inserted."""
    segments = _jpeg_segments(data)
    sof = next((s for s in segments if s[1] in _SOF_MARKERS), segments[0])
    r = rng.random()
    buf = bytearray(data)
    if r < 0.3:  # height or width
        at = sof[0] + (5 if rng.random() < 0.5 else 7)
        buf[at:at + 2] = struct.pack(">H", int(rng.choice([0, 1, 7, 8, 9, 16, 60, 64, 66, 2**15, 2**16 - 1])))
        return bytes(buf)
    at, _, length = segments[int(rng.integers(len(segments)))]
    if r < 0.7:
        buf[at + 4 + int(rng.integers(max(length - 2, 1)))] = int(rng.choice(_JPEG_BYTES))
        return bytes(buf)
    if r < 0.8:
        buf[at + 2:at + 4] = struct.pack(">H", int(rng.choice([0, 1, 2, length - 1, length + 1, 2**16 - 1])))
        return bytes(buf)
    whole = data[at:at + 2 + length]
    if r < 0.87:
        return data[:at] + data[at + 2 + length:]
    if r < 0.94:
        return data[:at] + whole + data[at:]
    interval = int(rng.choice([0, 1, 2, 16]))
    return data[:sof[0]] + b"\xff\xdd\x00\x04" + struct.pack(">H", interval) + data[sof[0]:]


def _jpeg_header(path: Path) -> tuple[tuple[int, int], int] | None:
    """((rows, columns), 8) from the last frame header before the scan (Pillow's rule)."""
    data = path.read_bytes()
    frames = [at for at, marker, _ in _jpeg_segments(data) if marker in _SOF_MARKERS]
    if not frames or frames[-1] + 9 > len(data):
        return None
    height, width = struct.unpack(">HH", data[frames[-1] + 5:frames[-1] + 9])
    return (height, width), 8


def _raster(tmp_path: Path, fmt: str, seed: int) -> Spec:
    picture = _radiograph()
    gray = Image.fromarray(np.round(picture * 255).astype(np.uint8), mode="L")
    if fmt == "PNG":
        sources = [_encoded(gray, format="PNG"),
                   _encoded(Image.fromarray(np.round(picture * 65535).astype(np.uint16)), format="PNG"),
                   _encoded(gray.convert("RGB").quantize(16), format="PNG")]  # a palette file
        edit, header, structure = _png_edit, _png_header, [
            next(at for at, kind, _ in _png_chunks(d) if kind == b"IDAT") + 8 for d in sources]
    else:
        colour = Image.merge("RGB", (gray, gray.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gray))
        sources = [_encoded(gray, format="JPEG", quality=90),
                   _encoded(gray, format="JPEG", quality=75, progressive=True),
                   _encoded(colour, format="JPEG", quality=90, subsampling="4:2:0")]
        edit, header, structure = _jpeg_edit, _jpeg_header, [
            _jpeg_segments(d)[-1][0] + 2 + _jpeg_segments(d)[-1][2] for d in sources]
    target = tmp_path / ("case.png" if fmt == "PNG" else "case.jpg")

    def make_case(i, rng):
        k = i % len(sources)
        target.write_bytes(edit(sources[k], rng) if rng.random() < 0.5 else _generic(sources[k], rng,
                                                                                       (0, structure[k])))
        return lambda: read_raster(target)

    def check(i, image):
        declared = header(target)
        if declared is None:
            return f"read a {fmt} file without a parseable image header"
        shape, depth = declared
        if image.pixels.shape != shape:
            return f"pixels {image.pixels.shape}, header declares {shape}"
        if image.format != fmt or image.bit_depth != depth:
            return f"read as {image.format} of {image.bit_depth} bits, the file is {fmt} of {depth}"
        top = 2.0 ** depth - 1
        if image.pixels.dtype != np.float32 or not np.all(np.isfinite(image.pixels)) or \
                image.pixels.min() < 0 or image.pixels.max() > top:
            return f"pixels outside 0..{top:.0f} or not float32"
        return None

    return Spec(make_case, check, seed=seed)


def jpeg(tmp_path: Path) -> Spec:
    return _raster(tmp_path, "JPEG", seed=707)


def png(tmp_path: Path) -> Spec:
    return _raster(tmp_path, "PNG", seed=808)


FORMATS: dict[str, Callable[[Path], Spec]] = {
    "DICOM image": dicom_image,
    "DICOM series": dicom_series,
    "WFDB": wfdb_record,
    "DICOM waveform ECG": dicom_ecg,
    "NIfTI": nifti,
    "NIfTI-gz": nifti_gz,
    "TIFF/WSI": tiff_wsi,
    "JPEG": jpeg,
    "PNG": png,
}
