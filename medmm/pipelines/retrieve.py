"""``python -m medmm.pipelines.retrieve``: a persistent retrieval index of a cohort."""

import sys

from medmm.workflows.retrieve.run import main

if __name__ == "__main__":
    sys.exit(main())
