"""``python -m medmm.pipelines.make_demo --out data/demo``: write the demo cohort
(real IU report text + synthetic DICOM X-rays, WFDB ECGs and labs that carry each
report's findings), its manifest, patient-level split and chance / oracle levels."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from medmm.cohort.spec import CohortSpec, SplitSpec, load_cohort_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmm.pipelines.make_demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder (default data/demo)")
    parser.add_argument("--n-studies", type=int, default=None, help="number of studies (default: every usable report)")
    parser.add_argument("--spec", type=Path, default=Path("cohorts/demo.yaml"),
                        help="cohort spec giving the split fractions and seed (default cohorts/demo.yaml)")
    parser.add_argument("--seed", type=int, default=None, help="generator and split seed (default: the spec's)")
    parser.add_argument("--workers", type=int, default=2, help="parallel writer processes")
    parser.add_argument("--iu-source", type=Path, default=None,
                        help="IU reports: the torchxrayvision wheel, its NLMCXR_reports.tgz or an extracted folder "
                             "(default: $MEDMM_IU_REPORTS or data/cache/torchxrayvision-1.5.7-py3-none-any.whl)")
    parser.add_argument("--missing", type=str, default=None,
                        help="drop modalities at random from train/val studies, e.g. ecg=0.3,report=0.3 "
                             "(default: the spec's `missing`; droppable: ecg, report, labs)")
    args = parser.parse_args(argv)

    # imported here so that --help and argument errors skip their ~1.5 s of imports (scipy, pydicom, pandas)
    from medmm.demo.generator import build_demo_cohort
    from medmm.metrics.reference_levels import REFERENCE_LEVELS_FILE

    spec = load_cohort_spec(args.spec) if args.spec.exists() else CohortSpec(
        name="demo", root=args.out, modalities=["xray", "ecg", "report", "labs"], split=SplitSpec())
    seed = spec.split.seed if args.seed is None else args.seed
    missing = dict(spec.missing)
    if args.missing:
        try:
            missing = {k.strip(): float(v) for k, v in (item.split("=") for item in args.missing.split(","))}
        except ValueError:
            parser.error(f"--missing expects modality=probability[,...], got {args.missing!r}")
    start = time.perf_counter()
    manifest = build_demo_cohort(args.out, n_studies=args.n_studies, seed=seed, workers=args.workers,
                                 iu_source=args.iu_source, split_fractions=spec.split.as_tuple(),
                                 missing=missing)
    studies = manifest.studies()
    counts = studies["split"].value_counts().to_dict()
    levels = json.loads((args.out / REFERENCE_LEVELS_FILE).read_text())
    print(f"demo cohort: {len(studies)} studies of {studies['patient_id'].nunique()} patients "
          f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}) in {args.out} "
          f"[{time.perf_counter() - start:.0f} s]")
    xr = levels["retrieval"]["xray->report"]
    print(f"X-ray->report label-match P@5: chance {xr['chance']['P@5']:.3f}, oracle {xr['oracle']['P@5']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
