"""Write the demo cohort: real report text beside synthetic X-rays, ECGs and labs carrying its findings.

The X-rays are DICOM, the ECGs WFDB records, the labs a table; the cohort comes with its
manifest, a patient-level split and the chance / oracle levels of its evaluations (the
ideal observer of the planted findings), which pretraining prints beside its scores."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from medmm.cohort.spec import CohortSpec, SplitSpec, load_cohort_spec
from medmm.pipelines.command import command_parser

INPUTS = ["the IU X-ray reports (--iu-source: the torchxrayvision wheel that `make data-cache` fetches)",
          "a cohort spec giving the split fractions and seed (--spec, default cohorts/demo.yaml)"]
OUTPUTS = ["the cohort under --out: patients/<patient>/<study>/ with xray.dcm, ecg.hea/.dat, report.txt; labs.csv",
           "manifest.parquet (files, hashes, split), reference_model.json and reference_levels.json",
           "with --structure higher_order: interaction.csv (per study: ECG pattern, lab value, X-ray finding)",
           "on the console: the counts per split and the X-ray -> report chance and oracle levels"]
EXAMPLES = ["--out data/demo", "--out data/demo_small --n-studies 200 --missing ecg=0.3,report=0.3",
            "--out data/demo_higher_order --n-studies 780 --structure higher_order"]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("make_demo", __doc__, INPUTS, OUTPUTS, EXAMPLES)
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
    parser.add_argument("--structure", choices=["pairwise", "higher_order"], default="pairwise",
                        help="pairwise (default): ECG and labs follow the report's findings; higher_order: the "
                             "X-ray's cardiomegaly is an ECG pattern XOR a lab value, each independent of the X-ray "
                             "(half the studies have cardiomegaly; writes interaction.csv)")
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
                                 missing=missing, structure=args.structure)
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
