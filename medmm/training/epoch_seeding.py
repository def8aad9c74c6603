"""Tell the datamodule which epoch starts, so its seeded augmentation differs per epoch
yet stays reproducible (and a resumed run continues the same sequence)."""

from __future__ import annotations


class EpochSeededData:
    """LightningModule mixin: calls ``datamodule.set_epoch(epoch)`` where it has one."""

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)
