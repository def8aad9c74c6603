"""``python -m medmm.pipelines.finetune``: one downstream task from one pretrained"""

import sys

from medmm.workflows.finetune.run import main

if __name__ == "__main__":
    sys.exit(main())
