"""``python -m medmm.pipelines.pretrain``: contrastive pretraining on a cohort, evaluated"""

import sys

from medmm.workflows.contrastive.run import main

if __name__ == "__main__":
    sys.exit(main())
