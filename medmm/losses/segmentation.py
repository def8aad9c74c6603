"""Segmentation loss: MONAI's DiceCE over softmax probabilities and one-hot labels, as
MulModSeg trains (background is one of the classes)."""

from __future__ import annotations

__all__ = ["dice_ce_loss"]


def dice_ce_loss(lambda_dice: float = 1.0, lambda_ce: float = 1.0):
    """``loss(logits [B, C, *], labels [B, 1, *] integer) -> scalar``: mean soft Dice loss
    over classes and images (smooth 1e-5) + cross-entropy, MONAI's defaults."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=True, lambda_dice=lambda_dice,
                      lambda_ce=lambda_ce)
