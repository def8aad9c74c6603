"""``python -m medmm.pipelines.make_demo_volumes --out data/demo_volumes``: write the CT + MR
segmentation extension of the demo cohort (abdominal phantoms with organ label maps, as
DICOM series and NIfTI, unpaired between CT and MR), or, with ``--invesalius`` /
``--mni152``, the cohort of real volumes cut into disjoint slabs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmm.pipelines.make_demo_volumes", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/demo_volumes"), help="output folder")
    parser.add_argument("--n-per-modality", type=int, default=20, help="phantom cases per modality (CT, MR)")
    parser.add_argument("--size", type=int, default=48, help="phantom side in voxels")
    parser.add_argument("--spacing", type=float, default=6.0, help="phantom voxel size in mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", action="store_true",
                        help="write the real-volume cohort instead (head CT of invesalius-examples + MNI152 T1)")
    parser.add_argument("--invesalius", type=Path, default=None,
                        help="with --real: Cranium.inv3 or the folder where invesalius-examples was extracted "
                             "(default: data/cache/Cranium.inv3 from `make invesalius-ct`)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # each branch imports only the builder it runs, after argument parsing (--help stays fast)
    if args.real:
        from medmm.demo.realdata_volumes import RealDataMissing, write_real_volume_cohort

        try:
            manifest = write_real_volume_cohort(args.out, invesalius_root=args.invesalius)
        except RealDataMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        from medmm.demo.volumes import write_volume_cohort

        manifest = write_volume_cohort(args.out, n_per_modality=args.n_per_modality, size=args.size,
                                       spacing_mm=args.spacing, seed=args.seed)
    table = manifest.table
    images = table[table["modality"].isin(["ct", "mr"])]
    counts = images.groupby(["modality", "split"]).size().to_dict()
    print(f"volume cohort in {args.out}: " + ", ".join(f"{m} {s} {n}" for (m, s), n in sorted(counts.items()))
          + f" [{time.perf_counter() - start:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
