"""Reading speed of medmm's readers against the libraries they wrap, and of the cache.

In one process, on the same files, interleaved so that load on the machine hits every
method alike; each time is the fastest of ``--repeats`` rounds (on a shared machine the
minimum is the least disturbed estimate; medians are saved too):
  * a CT series as DICOM (one file per slice): medmm.io.read_dicom_series vs pydicom
    directly (read every file, sort by position along the normal, modality LUT, stack)
    vs MONAI's LoadImage(PydicomReader);
  * the same CT as NIfTI (.nii.gz): medmm.io.read_nifti vs nibabel (load + get_fdata)
    vs MONAI's LoadImage(NibabelReader);
  * ``--ecg-records`` WFDB records (12 leads, 10 s at 1 kHz): medmm.io.read_ecg vs
    wfdb.rdrecord.
Target: medmm at most 1.2x the direct read. Then two epochs over all of it through
medmm.data.read_cache (MONAI PersistentDataset on disk, and CacheDataset in memory):
target, the second epoch at least 10x faster than the first.

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


def _direct_pydicom_series(folder: Path):
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut

    slices = [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]
    iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    return np.stack([apply_modality_lut(ds.pixel_array, ds).astype(np.float32).T for ds in slices], axis=-1)


def _direct_nibabel(path: Path):
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    return img.get_fdata(dtype=np.float32), img.affine


def _direct_wfdb(records: list[Path]):
    import wfdb

    return [wfdb.rdrecord(str(r.with_suffix(""))).p_signal for r in records]


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ecg-records", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/io_read.json")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    from monai.transforms import LoadImage
    from pydicom.data import get_testdata_file

    from medmm.data.read_cache import cached_reads
    from medmm.demo.realdata import invesalius_ct_path, load_invesalius_ct
    from medmm.demo.writers import write_dicom_series, write_wfdb
    from medmm.io.ecg import STANDARD_LEADS, read_ecg
    from medmm.io.volume import read_dicom_series, read_nifti

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
        nifti = tmp / "ct.nii.gz"
        nib.Nifti1Image(array.astype(np.int16), affine).to_filename(nifti)
        ecg = read_ecg(get_testdata_file("waveform_ecg.dcm"))  # real 12-lead, 10 s at 1 kHz
        records = [write_wfdb(tmp / "ecg" / f"rec{i:03d}", ecg.signal, ecg.fs, STANDARD_LEADS)
                   for i in range(args.ecg_records)]

        # same answer first: the comparison is between equal results
        assert np.array_equal(read_dicom_series(series).array, _direct_pydicom_series(series))
        assert np.array_equal(read_nifti(nifti).array, _direct_nibabel(nifti)[0])

        load_dicom = LoadImage(reader="PydicomReader", image_only=True)
        load_nifti = LoadImage(reader="NibabelReader", image_only=True)
        methods = {
            "dicom_series": {
                "medmm": lambda: read_dicom_series(series),
                "direct": lambda: _direct_pydicom_series(series),
                "monai": lambda: load_dicom(str(series)),
            },
            "nifti": {
                "medmm": lambda: read_nifti(nifti),
                "direct": lambda: _direct_nibabel(nifti),
                "monai": lambda: load_nifti(str(nifti)),
            },
            "wfdb": {
                "medmm": lambda: [read_ecg(r) for r in records],
                "direct": lambda: _direct_wfdb(records),
            },
        }
        for fns in methods.values():  # warm-up: imports, plugin discovery, page cache
            for fn in fns.values():
                fn()
        samples: dict[str, dict[str, list[float]]] = {k: {m: [] for m in v} for k, v in methods.items()}
        for _ in range(args.repeats):
            for kind, fns in methods.items():
                for name, fn in fns.items():
                    samples[kind][name].append(_time(fn))
        reads = {}
        for kind, per in samples.items():
            med = {name: min(ts) for name, ts in per.items()}
            row = {f"{name}_s": round(t, 4) for name, t in med.items()}
            row.update({f"{name}_median_s": round(statistics.median(ts), 4) for name, ts in per.items()})
            row["medmm_over_direct"] = round(med["medmm"] / med["direct"], 3)
            if "monai" in med:
                row["medmm_over_monai"] = round(med["medmm"] / med["monai"], 3)
            reads[kind] = row

        items = ([{"path": series, "kind": "dicom_series"}, {"path": nifti, "kind": "nifti"}]
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
        "what": "seconds per read of the whole item (series / volume / all ECG records), fastest of the repeats",
        "ct": f"{ct_source}, {tuple(int(s) for s in array.shape)} voxels, {array.shape[2]} DICOM files",
        "ecg": f"{args.ecg_records} WFDB records, 12 leads x 10000 samples (format 16)",
        "repeats": args.repeats,
        "load_average_1m_at_end": round(os.getloadavg()[0], 1),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "reads": reads,
        "cache_epochs": cache,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"CT: {result['ct']}; ECG: {result['ecg']}; load average {result['load_average_1m_at_end']} "
          f"on {result['cpu_count']} CPUs")
    print(f"{'read':<14}{'medmm s':>10}{'direct s':>10}{'MONAI s':>10}{'medmm/direct':>14}{'medmm/MONAI':>13}")
    for kind, row in reads.items():
        monai_s = f"{row['monai_s']:.3f}" if "monai_s" in row else "-"
        ratio_m = f"{row['medmm_over_monai']:.2f}" if "medmm_over_monai" in row else "-"
        print(f"{kind:<14}{row['medmm_s']:>10.3f}{row['direct_s']:>10.3f}{monai_s:>10}"
              f"{row['medmm_over_direct']:>14.2f}{ratio_m:>13}")
    for name, row in cache.items():
        print(f"cache {name:<16} epoch 1 {row['epoch1_s']:.3f} s, epoch 2 {row['epoch2_s']:.4f} s: "
              f"{row['speedup']:.1f}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
