"""``python -m medmm.pipelines.deid``: de-identify a folder of DICOM files and report text."""

import sys

from medmm.workflows.deid.run import main

if __name__ == "__main__":
    sys.exit(main())
