"""The one way DistriNews loads models: a local folder or a Hub repo id (+ revision).

Used by training (to start from a base model), ``distrinews evaluate``/``predict``, the notebook, the
Space and the tests. Weights load from safetensors only and remote code never runs: a model repo is
untrusted input. ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the HF cache are honoured by huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .data import LABEL_NAMES

PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded safely; the message says which and why."""


def load_classifier(model_id_or_path: str, revision: str | None = None, *,
                    for_training: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a folder or a Hub repo id at ``revision`` (branch, tag or commit).

    With ``for_training`` the classification head is (re)sized to the AG News labels and their names are
    written into the config, so ``pipeline("text-classification")`` prints names, not LABEL_0.
    """
    options = dict(revision=revision or None, trust_remote_code=False)
    head_options = {}
    if for_training:
        # transformers 5 loads weights in their saved dtype by default; training needs fp32 master weights
        # (mixed precision comes from autocast), whatever dtype the checkpoint was saved in.
        head_options = dict(dtype=torch.float32, num_labels=len(LABEL_NAMES), id2label=dict(enumerate(LABEL_NAMES)),
                            label2id={name: i for i, name in enumerate(LABEL_NAMES)},
                            ignore_mismatched_sizes=True)
    _refuse_pickle_only_folder(model_id_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id_or_path, **options)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_id_or_path, use_safetensors=True, **options, **head_options)
    except (OSError, ValueError) as err:
        where = f"{model_id_or_path!r}" + (f" at revision {revision!r}" if revision else "")
        hint = ("it may hold pickle weights only (pytorch_model.bin), which DistriNews refuses to load: "
                "re-save it with save_pretrained(safe_serialization=True)")
        raise ModelLoadError(f"cannot load model {where}: {err}\nIf the model exists, {hint}") from err
    return model, tokenizer


def _refuse_pickle_only_folder(model_id_or_path: str) -> None:
    folder = Path(model_id_or_path)
    if not folder.is_dir():
        return
    has_safetensors = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    pickles = [name for name in PICKLE_WEIGHT_FILES if (folder / name).is_file()]
    if pickles and not has_safetensors:
        raise ModelLoadError(f"{folder} holds only pickle weights ({', '.join(pickles)}); DistriNews loads "
                             "safetensors only because unpickling can run arbitrary code. Re-save the model with "
                             "save_pretrained(safe_serialization=True).")
