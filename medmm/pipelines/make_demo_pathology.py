"""Write the pathology + genomics demo cohort, whose outcomes follow a planted hazard.

Slides are cut from a real H&E image, gene-group expression and clinical outcomes are tied
to a planted hazard; the cohort comes with its manifest and a patient-level split.
``survival`` trains on it with ``data.dataset=pathology``; the printed oracle c-index is
the best a model can reach."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from medmm.cohort.spec import load_cohort_spec
from medmm.pipelines.command import command_parser

INPUTS = ["a real H&E image (--he-source: the tiatoolbox wheel that `make data-cache` fetches, or a PNG)",
          "a cohort spec giving the split fractions and seed (--spec, default cohorts/demo_pathology.yaml)"]
OUTPUTS = ["the cohort under --out: pyramidal TIFF slides, gene-group expression and clinical tables, truth.csv",
           "manifest.parquet (files, hashes, patient-level split)",
           "on the console: the patients per split and the oracle test c-index"]
EXAMPLES = ["--out data/demo_pathology", "--out data/demo_pathology_small --n-patients 60 --slide-side 256"]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("make_demo_pathology", __doc__, INPUTS, OUTPUTS, EXAMPLES)
    parser.add_argument("--out", type=Path, default=Path("data/demo_pathology"), help="output folder")
    parser.add_argument("--n-patients", type=int, default=240)
    parser.add_argument("--spec", type=Path, default=Path("cohorts/demo_pathology.yaml"),
                        help="cohort spec giving the split fractions and seed")
    parser.add_argument("--seed", type=int, default=None, help="generator and split seed (default: the spec's)")
    parser.add_argument("--slide-side", type=int, default=512, help="slide side in pixels at 20x")
    parser.add_argument("--he-source", type=Path, default=None,
                        help="the tiatoolbox wheel or a PNG (default: $MEDMM_HE_WHEEL or "
                             "data/cache/tiatoolbox-2.1.3-py3-none-any.whl)")
    args = parser.parse_args(argv)

    # imported here so that --help and argument errors skip its imports (pandas, scikit-image, the survival data)
    from medmm.demo.pathology import build_pathology_cohort, oracle_c_index

    fractions, seed = (0.6, 0.15, 0.25), 0
    if args.spec.exists():
        spec = load_cohort_spec(args.spec)
        fractions, seed = spec.split.as_tuple(), spec.split.seed
    seed = seed if args.seed is None else args.seed
    start = time.perf_counter()
    try:
        manifest = build_pathology_cohort(args.out, args.n_patients, seed, args.slide_side, args.he_source, fractions)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = manifest.table[manifest.table["modality"] == "wsi"]["split"].value_counts().to_dict()
    print(f"pathology demo cohort: {args.n_patients} patients ({counts}) in {args.out} "
          f"[{time.perf_counter() - start:.0f} s]; oracle test C-index {oracle_c_index(args.out):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
