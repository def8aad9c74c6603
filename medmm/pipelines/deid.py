"""``python -m medmm.pipelines.deid``: de-identify a folder of DICOM files, report text and ECGs.

    MEDMM_DEID_KEY=<secret> python -m medmm.pipelines.deid --in /data/raw --out /data/deid

DICOM (recognised by content) per DICOM PS3.15 Annex E; ``*.txt`` reports scrubbed, with
the cohort's own patient names and IDs from the DICOM headers scrubbed wherever they
appear; WFDB ECG records with their start date / time and comments removed. Every other
file is left out. Output paths are keyed hashes of the input path components, so a
patient / study / series folder maps to one output folder; the same key gives the same
pseudonyms, UIDs and date shifts on a later run (keep it secret, and out of the output).
An audit log (``<out>/deid_audit.jsonl``) lists per output file what changed, never a
value. Images flagged BurnedInAnnotation=YES are refused unless ``--allow-burned-in``.
Exit code 1 when any file was refused or unreadable.
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command
from medmm.workflows.deid.run import KEY_ENV, run, secret_key


def arguments(parser) -> None:
    parser.add_argument("--in", dest="src", type=Path, required=True, help="folder with DICOM files and reports")
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside --in)")
    parser.add_argument("--allow-burned-in", action="store_true",
                        help="also de-identify images flagged BurnedInAnnotation=YES (their pixels may still show PHI)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"file holding the secret key (default: ${KEY_ENV}; else a random one-off key)")


COMMAND = Command("deid", __doc__, None, arguments=arguments,
                  examples=["--in /data/raw --out /data/deid --key-file /secure/deid.key"])


def execute(_, args):
    return run(args.src, args.out, secret_key(args.key_file), allow_burned_in=args.allow_burned_in)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
