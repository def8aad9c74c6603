"""``python -m medmm.pipelines.survival``: survival models and baselines trained on the same"""

import sys

from medmm.workflows.survival.run import main

if __name__ == "__main__":
    sys.exit(main())
