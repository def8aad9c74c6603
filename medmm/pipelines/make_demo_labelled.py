"""Write labelled image sets of four imaging modalities, laid out as classification datasets ship.

Chest X-ray phantoms with their findings, axial CT and MR slices of the abdominal phantoms with
the organs in view, and tiles of a real H&E image with their tissue class: per modality a
labels.csv (path, patient, one column per class) and the images as PNG. ``image_text`` trains
one image-text model on them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from medmm.pipelines.command import command_parser

INPUTS = ["nothing for X-ray, CT and MR (sizes and --seed shape them)",
          "pathology: the tiatoolbox wheel's H&E image (MEDMM_HE_WHEEL, from `make data-cache`)"]
OUTPUTS = ["under --out, per modality: labels.csv (path, patient, classes: 1 / 0 / -1 / blank) and images/*.png",
           "on the console: the images written per modality"]
EXAMPLES = ["--out data/demo_labelled", "--out data/demo_labelled --modalities ct mr --n-volumes 60"]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("make_demo_labelled", __doc__, INPUTS, OUTPUTS, EXAMPLES)
    parser.add_argument("--out", type=Path, default=Path("data/demo_labelled"), help="output folder")
    parser.add_argument("--modalities", nargs="+", default=["xray", "ct", "mr", "pathology"],
                        choices=["xray", "ct", "mr", "pathology"])
    parser.add_argument("--n-xray", type=int, default=1200, help="chest X-rays (one per patient)")
    parser.add_argument("--n-volumes", type=int, default=30, help="phantom volumes per modality (CT, MR)")
    parser.add_argument("--n-tiles", type=int, default=900, help="H&E tiles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # imported after argument parsing, so that --help stays fast
    from medmm.demo.labelled_images import write_labelled_image_sets

    try:
        written = write_labelled_image_sets(args.out, n_xray=args.n_xray, n_volumes=args.n_volumes,
                                            n_tiles=args.n_tiles, seed=args.seed, modalities=tuple(args.modalities))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {m: sum(1 for _ in open(p)) - 1 for m, p in written.items()}
    print(f"labelled image sets in {args.out}: " + ", ".join(f"{m} {n}" for m, n in counts.items())
          + f" [{time.perf_counter() - start:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
