"""Training losses: pairwise CLIP / InfoNCE and Symile (single-process and gathered over
DDP), PTUnifier's ITC / ITM / MLM, survival likelihoods and segmentation DiceCE."""

from medmm.losses.contrastive import (
    LogitScale,
    clip_loss,
    known_label_targets,
    label_aware_targets,
    multi_modal_clip_loss,
    pair_key,
    same_label_contrastive,
)
from medmm.losses.distributed import gather_no_grad, gather_with_grad, gathered_clip_loss, gathered_symile_loss, world
from medmm.losses.ptunifier import itc_loss, itm_loss, mlm_loss, sample_hard_negatives, whole_word_mask, word_starts
from medmm.losses.segmentation import dice_ce_loss
from medmm.losses.survival import alignment_l1, cox_partial_nll, discrete_time_nll
from medmm.losses.symile import Negatives, clip_scores, mip, symile_logits, symile_loss, symile_scores

__all__ = [
    "LogitScale",
    "Negatives",
    "alignment_l1",
    "clip_loss",
    "clip_scores",
    "cox_partial_nll",
    "dice_ce_loss",
    "discrete_time_nll",
    "gather_no_grad",
    "gather_with_grad",
    "gathered_clip_loss",
    "gathered_symile_loss",
    "itc_loss",
    "itm_loss",
    "known_label_targets",
    "label_aware_targets",
    "mip",
    "mlm_loss",
    "multi_modal_clip_loss",
    "pair_key",
    "same_label_contrastive",
    "sample_hard_negatives",
    "symile_logits",
    "symile_loss",
    "symile_scores",
    "whole_word_mask",
    "word_starts",
    "world",
]
