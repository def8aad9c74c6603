"""``python -m medmm.pipelines.make_demo_pathology --out data/demo_pathology``: write the
pathology + genomics demo cohort (slides from a real H&E image, gene-group expression and
clinical outcome tied to a planted hazard) with its manifest and patient-level split."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medmm.cohort.spec import load_cohort_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmm.pipelines.make_demo_pathology", description=__doc__)
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
