"""Start-up hook of the resume test's subprocesses (on their PYTHONPATH as ``sitecustomize``):
holds a pretraining run at the point ``MEDMM_TEST_PAUSE`` names (``epoch``: the second batch of
the second epoch; ``checkpoint``: a checkpoint's temp file written but not yet renamed;
``evaluation``: the start of test-split evaluation), writes ``MEDMM_TEST_PAUSE_MARKER`` and
sleeps, so the test kills the run exactly there whatever the machine's speed."""

import os
import time
from pathlib import Path

POINT = os.environ.get("MEDMM_TEST_PAUSE")


def pause(point: str) -> None:
    marker = Path(os.environ["MEDMM_TEST_PAUSE_MARKER"])
    if point == POINT and not marker.exists():
        marker.write_text(point)
        time.sleep(600)


if POINT == "epoch":
    from medmm.workflows.contrastive.module import ContrastivePretrainTask

    training_step = ContrastivePretrainTask.training_step

    def paused_training_step(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            pause("epoch")
        return training_step(self, batch, batch_idx)

    ContrastivePretrainTask.training_step = paused_training_step

elif POINT == "checkpoint":
    from medmm.training import lightning_run

    class PausingOs:
        """``os`` for the checkpoint writer: pauses at the first fsync, when the temp file is
        written and not yet renamed into place."""

        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd):
            pause("checkpoint")
            return os.fsync(fd)

    lightning_run.os = PausingOs()

elif POINT == "evaluation":
    from medmm.workflows.contrastive import evaluation

    evaluate_contrastive = evaluation.evaluate_contrastive

    def paused_evaluate_contrastive(*args, **kwargs):
        pause("evaluation")
        return evaluate_contrastive(*args, **kwargs)

    evaluation.evaluate_contrastive = paused_evaluate_contrastive
