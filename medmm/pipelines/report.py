"""``python -m medmm.pipelines.report``: report generation from a pretrained encoder."""

import sys

from medmm.workflows.report.run import main

if __name__ == "__main__":
    sys.exit(main())
