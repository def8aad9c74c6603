"""Reading speed of medmm's readers against the libraries they wrap, and of the cache.

Each reader is timed against its library used the way the library's own users use it,
producing the same array medmm returns (same values, dtype and memory layout; checked
with numpy.testing before timing):
  * a CT series as DICOM (one file per slice): medmm.io.read_dicom_series vs pydicom
    (dcmread of every file, sort by ImagePositionPatient along the slice normal,
    np.stack of pixel_array as float32, Rescale Slope / Intercept applied, the
    [column, row, slice] view of the contiguous stack that medmm returns);
  * the same CT as NIfTI, .nii and .nii.gz: medmm.io.read_nifti vs
    nibabel.load(...).get_fdata(dtype=float32);
  * ``--ecg-records`` WFDB records (12 leads, 10 s at 1 kHz, in mV): medmm.io.read_ecg vs
    wfdb.rdrecord(...).p_signal as C-contiguous float32 [leads, samples];
MONAI's LoadImage reads the CT too, for reference. Every round times every method once,
medmm and the library back to back in alternating order, so that load on the machine
hits both alike; a figure is the median of ``--rounds`` rounds, a ratio the median of the
per-round ratios, and the 1-minute load average is printed beside each (median over its
rounds). Each read is timed twice over: wall clock, and the CPU time of this process
(every reader here runs on one thread, so on a machine shared with other jobs the CPU
time leaves out the time spent waiting for a core). Target: medmm at most 1.1x the
library. Then two epochs over all of it through
medmm.data.read_cache (MONAI PersistentDataset on disk, and CacheDataset in memory): the
second epoch's speed-up over the first (on disk it reads back float32 volumes, twice the
bytes of int16 sources, so its gain shrinks as the readers get faster).

The CT is the real head CT of Debian's invesalius-examples (``make invesalius-ct``);
without it, a synthetic volume of the same size. Results: benchmarks/results/io_read.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import wfdb  # noqa: E402
from monai.transforms import LoadImage  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from medmm.data.read_cache import cached_reads  # noqa: E402
from medmm.demo.realdata import invesalius_ct_path, load_invesalius_ct  # noqa: E402
from medmm.demo.writers import write_dicom_series, write_wfdb  # noqa: E402
from medmm.io.ecg import STANDARD_LEADS, read_ecg  # noqa: E402
from medmm.io.volume import read_dicom_series, read_nifti  # noqa: E402


def pydicom_series(folder: Path) -> np.ndarray:
    """A DICOM series as pydicom's users stack one: float32 ``[column, row, slice]``, a
    view of the contiguous ``[slice, row, column]`` stack, in HU."""
    slices = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    iop = [float(v) for v in slices[0].ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    volume = np.stack([ds.pixel_array for ds in slices]).astype(np.float32)
    slope, intercept = float(slices[0].get("RescaleSlope", 1)), float(slices[0].get("RescaleIntercept", 0))
    if slope != 1:
        volume *= slope
    if intercept != 0:
        volume += intercept
    return volume.transpose(2, 1, 0)


def nibabel_volume(path: Path) -> np.ndarray:
    return nib.load(str(path)).get_fdata(dtype=np.float32)


def wfdb_signals(records: list[Path]) -> list[np.ndarray]:
    return [np.ascontiguousarray(wfdb.rdrecord(str(r.with_suffix(""))).p_signal.T, dtype=np.float32)
            for r in records]


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _wall_and_cpu(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _same(medmm_out, library_out) -> None:
    """medmm's result equals the library's: values, dtype and memory layout."""
    pairs = zip(medmm_out, library_out) if isinstance(library_out, list) else [(medmm_out, library_out)]
    for ours, theirs in pairs:
        np.testing.assert_array_equal(ours, theirs, strict=True)
        assert ours.strides == theirs.strides, (ours.strides, theirs.strides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=16, help="an even number: each method goes first as often")
    parser.add_argument("--ecg-records", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/io_read.json")
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    ct_path = invesalius_ct_path(Path(__file__).resolve().parents[1])
    if ct_path.is_file():
        ct = load_invesalius_ct(ct_path)
        array, affine, ct_source = ct.array, ct.affine, "invesalius-examples head CT (real)"
    else:
        rng = np.random.default_rng(0)
        array = rng.integers(-1024, 2000, (256, 256, 108)).astype(np.float32)
        affine, ct_source = np.diag([-0.957, -0.957, 1.5, 1.0]), "synthetic (invesalius-examples not fetched)"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        series = tmp / "series"
        write_dicom_series(array, affine, series)
        nii, nii_gz = tmp / "ct.nii", tmp / "ct.nii.gz"
        for path in (nii, nii_gz):
            nib.Nifti1Image(array.astype(np.int16), affine).to_filename(path)
        ecg = read_ecg(get_testdata_file("waveform_ecg.dcm"))  # real 12-lead, 10 s at 1 kHz
        records = [write_wfdb(tmp / "ecg" / f"rec{i:03d}", ecg.signal, ecg.fs, STANDARD_LEADS)
                   for i in range(args.ecg_records)]

        load_dicom = LoadImage(reader="PydicomReader", image_only=True)
        load_nifti = LoadImage(reader="NibabelReader", image_only=True)
        readers = {  # kind -> (medmm, library, MONAI or None)
            "dicom_series": (lambda: read_dicom_series(series).array, lambda: pydicom_series(series),
                             lambda: load_dicom(str(series))),
            "nifti": (lambda: read_nifti(nii).array, lambda: nibabel_volume(nii), lambda: load_nifti(str(nii))),
            "nifti_gz": (lambda: read_nifti(nii_gz).array, lambda: nibabel_volume(nii_gz),
                         lambda: load_nifti(str(nii_gz))),
            "wfdb": (lambda: [read_ecg(r).signal for r in records], lambda: wfdb_signals(records), None),
        }
        for medmm_read, library_read, monai_read in readers.values():  # equal results; warm-up
            _same(medmm_read(), library_read())
            if monai_read is not None:
                monai_read()

        samples = {kind: {key: [] for key in ("medmm", "library", "monai", "ratio", "medmm_cpu", "library_cpu",
                                              "ratio_cpu", "load")} for kind in readers}
        for round_ in range(args.rounds):
            for kind, (medmm_read, library_read, monai_read) in readers.items():
                row = samples[kind]
                if monai_read is not None:
                    row["monai"].append(_time(monai_read))
                pair = [("medmm", medmm_read), ("library", library_read)]
                times = {name: _wall_and_cpu(fn) for name, fn in (pair if round_ % 2 == 0 else pair[::-1])}
                for name in ("medmm", "library"):
                    row[name].append(times[name][0])
                    row[f"{name}_cpu"].append(times[name][1])
                row["ratio"].append(times["medmm"][0] / times["library"][0])
                row["ratio_cpu"].append(times["medmm"][1] / times["library"][1])
                row["load"].append(os.getloadavg()[0])

        reads = {}
        for kind, row in samples.items():
            med = {name: statistics.median(values) for name, values in row.items() if values}
            reads[kind] = {
                "medmm_s": round(med["medmm"], 4),
                "library_s": round(med["library"], 4),
                "medmm_over_library": round(med["ratio"], 3),
                "medmm_over_library_quartiles": [round(q, 3) for q in statistics.quantiles(row["ratio"], n=4)],
                "medmm_cpu_s": round(med["medmm_cpu"], 4),
                "library_cpu_s": round(med["library_cpu"], 4),
                "medmm_over_library_cpu": round(med["ratio_cpu"], 3),
                "medmm_over_library_cpu_quartiles": [round(q, 3) for q in statistics.quantiles(row["ratio_cpu"], n=4)],
                "load_average_1m": round(med["load"], 2),
                "load_average_1m_range": [round(min(row["load"]), 2), round(max(row["load"]), 2)],
            }
            if row["monai"]:
                reads[kind]["monai_s"] = round(statistics.median(row["monai"]), 4)
                reads[kind]["medmm_over_monai"] = round(med["medmm"] / statistics.median(row["monai"]), 3)

        items = ([{"path": series, "kind": "dicom_series"}, {"path": nii_gz, "kind": "nifti"}]
                 + [{"path": r, "kind": "ecg"} for r in records])
        cache = {}
        firsts, seconds = [], []
        for round_ in range(2):  # a fresh cache folder per round: epoch 1 really reads
            persistent = cached_reads(items, tmp / f"cache{round_}")
            firsts.append(_time(lambda: [persistent[i] for i in range(len(items))]))
            seconds += [_time(lambda: [persistent[i] for i in range(len(items))]) for _ in range(2)]
        first, second = min(firsts), min(seconds)
        cache["persistent_disk"] = {"epoch1_s": round(first, 3), "epoch2_s": round(second, 3),
                                    "speedup": round(first / second, 1)}
        t0 = time.perf_counter()
        memory = cached_reads(items)  # CacheDataset reads everything at construction
        first = time.perf_counter() - t0
        second = min(_time(lambda: [memory[i] for i in range(len(items))]) for _ in range(3))
        cache["in_memory"] = {"epoch1_s": round(first, 3), "epoch2_s": round(second, 4),
                              "speedup": round(first / second, 1)}

    result = {
        "what": "seconds per read of the whole item (series / volume / all ECG records), median of the rounds, "
                "wall clock and (_cpu) this process's CPU time; medmm_over_library is the median of the per-round "
                "ratios",
        "libraries": {"dicom_series": "pydicom", "nifti": "nibabel", "nifti_gz": "nibabel", "wfdb": "wfdb"},
        "ct": f"{ct_source}, {tuple(int(s) for s in array.shape)} voxels, {array.shape[2]} DICOM files",
        "ecg": f"{args.ecg_records} WFDB records, 12 leads x 10000 samples (format 16)",
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {"pydicom": pydicom.__version__, "nibabel": nib.__version__, "wfdb": wfdb.__version__,
                     "numpy": np.__version__},
        "reads": reads,
        "cache_epochs": cache,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"CT: {result['ct']}; ECG: {result['ecg']}; {args.rounds} rounds on {result['cpu_count']} CPUs")
    print(f"{'read':<14}{'medmm s':>10}{'library s':>11}{'MONAI s':>10}{'medmm/library':>15}{'(CPU time)':>12}"
          f"{'medmm/MONAI':>13}{'load 1m':>10}")
    for kind, row in reads.items():
        monai_s = f"{row['monai_s']:.4f}" if "monai_s" in row else "-"
        ratio_m = f"{row['medmm_over_monai']:.2f}" if "medmm_over_monai" in row else "-"
        print(f"{kind:<14}{row['medmm_s']:>10.4f}{row['library_s']:>11.4f}{monai_s:>10}"
              f"{row['medmm_over_library']:>15.3f}{row['medmm_over_library_cpu']:>12.3f}{ratio_m:>13}"
              f"{row['load_average_1m']:>10.2f}")
    for name, row in cache.items():
        print(f"cache {name:<16} epoch 1 {row['epoch1_s']:.3f} s, epoch 2 {row['epoch2_s']:.4f} s: "
              f"{row['speedup']:.1f}x (load {result['load_average_1m_at_end']:.2f})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
