"""Config of the Lightning trainer of the training workflows (``trainer:`` of their schemas)."""

from __future__ import annotations

from pydantic import Field

from medmm.config.core import StrictModel


class TrainerConfig(StrictModel):
    max_epochs: int = 7
    accelerator: str = Field("auto", description="cpu | gpu | auto")
    devices: int | str = "auto"
    precision: str | None = Field(None, description="None = bf16-mixed where the GPU or CPU computes bfloat16 "
                                                     "natively, 16-mixed on an older GPU, else 32-true")
    log_every_n_steps: int = 10
    limit_train_batches: int | float | None = None
    gradient_clip_val: float | None = 1.0
    threads: int | None = Field(None, description="torch CPU threads (None = all cores)")
    num_nodes: int = Field(1, description="machines in a multi-node run (torchrun / SLURM recipes in pipelines/)")
    grad_cache_chunk: int | None = Field(
        None, description="GradCache: encode the batch in chunks of this size and cache embedding gradients, so "
                          "a contrastive batch of data.batch_size fits in the memory of one chunk (None = off)")


