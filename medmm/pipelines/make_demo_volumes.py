"""Write the CT + MR segmentation cohort: abdominal phantoms with organ labels, or real volumes in slabs.

The phantoms are written as DICOM series and NIfTI, unpaired between CT and MR; with
``--real`` the cohort is made of real volumes (a head CT and the MNI152 T1) cut into
disjoint slabs. ``segment`` trains on either."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from medmm.pipelines.command import command_parser

INPUTS = ["nothing for the phantoms (--n-per-modality, --size, --spacing, --seed shape them)",
          "--real: the invesalius head CT (--invesalius, from `make invesalius-ct`) and nilearn's MNI152 T1"]
OUTPUTS = ["the cohort under --out: CT and MR volumes (DICOM series and NIfTI) with organ label maps",
           "manifest.parquet (files, hashes, split) and labels.json (the organ classes)",
           "on the console: the volumes per modality and split"]
EXAMPLES = ["--out data/demo_volumes", "--out data/demo_volumes_real --real"]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("make_demo_volumes", __doc__, INPUTS, OUTPUTS, EXAMPLES)
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
