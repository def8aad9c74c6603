"""Whether a pretrained PTUnifier model's representations differ between studies.

For one batch of held-out demo studies: the mean cosine similarity between different studies'
image-side ITC embeddings (image + pseudo-text through the fusion), text-side ITC embeddings
(pseudo-image + text) and the ViT's image CLS, and the mean ITC similarity of true pairs
against other pairs. A mean cosine near 1 between different studies means the representation
has collapsed to one vector: the contrastive loss then sits at ln(batch size).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from medmm.data.config import DataConfig
from medmm.data.datamodule import PretrainDataModule
from medmm.models.ptunifier import itc_image_embeddings, itc_text_embeddings
from medmm.workflows.pretrained import load_pretrained


def mean_cosine_between_studies(embeddings: torch.Tensor) -> float:
    e = F.normalize(embeddings, dim=-1)
    sim = e @ e.T
    n = len(sim)
    return float((sim.sum() - sim.diag().sum()) / (n * n - n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported PTUnifier folder or MLflow model URI")
    parser.add_argument("--root", default="data/demo")
    parser.add_argument("--studies", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    pretrained = load_pretrained(args.model, kind="ptunifier")
    model, pre = pretrained.model.eval(), pretrained.config
    dm = PretrainDataModule(DataConfig(root=args.root, image_size=pre.data.image_size, batch_size=args.studies),
                            max_tokens=pre.model.text.max_tokens, seed=0, tokenizer_path=pre.model.text.model_path)
    dm.setup()
    batch = next(iter(dm.loader("test")))
    with torch.no_grad():
        image = itc_image_embeddings(model, batch["xray"])
        text = itc_text_embeddings(model, batch["report_ids"], batch["report_mask"])
        image_cls = model.encode_image(batch["xray"])[:, 0]
    pairs = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    n = len(pairs)
    result = {
        "studies": n,
        "mean_cosine_between_studies": {"itc_image_side": round(mean_cosine_between_studies(image), 4),
                                        "itc_text_side": round(mean_cosine_between_studies(text), 4),
                                        "vit_image_cls": round(mean_cosine_between_studies(image_cls), 4)},
        "itc_similarity": {"true_pairs": round(float(pairs.diag().mean()), 4),
                           "other_pairs": round(float((pairs.sum() - pairs.diag().sum()) / (n * n - n)), 4)},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
