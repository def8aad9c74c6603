"""``python -m medmm.pipelines.segment``: CT / MR segmentation, MulModSeg text-conditioned"""

import sys

from medmm.workflows.segment.run import main

if __name__ == "__main__":
    sys.exit(main())
