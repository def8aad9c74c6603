"""De-identify a folder of DICOM files, report text and ECGs into a new folder.

DICOM (recognised by content) per DICOM PS3.15 Annex E; ``*.txt`` reports scrubbed, with
the cohort's own patient names and IDs from the DICOM headers scrubbed wherever they
appear; WFDB ECG records with their start date / time and comments removed. Every other
file is left out. Output paths are keyed pseudonyms of the input path components, the same
pseudonyms the headers get (a report named by its accession number is named by that
accession's pseudonym, so links by accession, study UID or patient ID still hold); the
literal folder names of ``--spec``'s patterns are kept, so the same cohort spec ingests the
output. The same key gives the same pseudonyms, UIDs and date shifts on a later run (keep it
secret, and out of the output). DICOMDIRs are left out; cut DICOM files are refused.
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
    parser.add_argument("--spec", type=Path, default=None,
                        help="cohort spec the output is for: the literal folder / file names of its patterns "
                             "(e.g. dicom/, reports/) are kept, so the same spec ingests the output")


COMMAND = Command("deid", __doc__, None, arguments=arguments,
                  inputs=["a folder of DICOM files, *.txt reports and WFDB ECG records (--in)",
                          f"a secret key (--key-file, else ${KEY_ENV}; without one, a random one-off key)"],
                  outputs=["the de-identified copies under --out, in folders named by keyed pseudonyms",
                           "<out>/deid_audit.jsonl: per output file what changed, never a value",
                           "exit code 1 when any file was refused or unreadable"],
                  examples=["--in /data/export --out /data/export-deid --spec cohorts/hospital_export_example.yaml "
                            "--key-file /secure/deid.key",
                            "--in /data/raw --out /data/deid --key-file /secure/deid.key",
                            "--in /data/raw --out /data/deid    # key from $MEDMM_DEID_KEY"])


def execute(_, args):
    return run(args.src, args.out, secret_key(args.key_file), allow_burned_in=args.allow_burned_in, spec=args.spec)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
