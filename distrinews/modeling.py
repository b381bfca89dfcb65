"""The one way DistriNews loads models: a local folder or a Hub repo id (+ revision).

Used by training (to start from a base model), ``distrinews evaluate``/``predict``, the notebook, the
Space and the tests. Weights load from safetensors only and remote code never runs: a model repo is
untrusted input. ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the HF cache are honoured by huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .data import LABEL_NAMES

PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
# What loading a classifier needs: config, safetensors weights and tokenizer files, plus the model card (the
# Space shows its test metrics, from the same commit as the weights). An allow-list, so pickle weights,
# ONNX/TF/Flax exports and images in the repo are never even downloaded.
LOADABLE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "README.md"]


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded safely; the message says which and why."""


def load_classifier(model_id_or_path: str, revision: str | None = None, *,
                    for_training: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a folder or a Hub repo id at ``revision`` (branch, tag or commit).

    With ``for_training`` the classification head is (re)sized to the AG News labels and their names are
    written into the config, so ``pipeline("text-classification")`` prints names, not LABEL_0.
    """
    folder = resolve_model_folder(model_id_or_path, revision)
    _refuse_pickle_only_folder(folder, model_id_or_path, revision)
    head_options = {}
    if for_training:
        # transformers 5 loads weights in their saved dtype by default; training needs fp32 master weights
        # (mixed precision comes from autocast), whatever dtype the checkpoint was saved in.
        head_options = dict(dtype=torch.float32, num_labels=len(LABEL_NAMES), id2label=dict(enumerate(LABEL_NAMES)),
                            label2id={name: i for i, name in enumerate(LABEL_NAMES)},
                            ignore_mismatched_sizes=True,
                            # Set now rather than inferred on the first forward: that inference mutates the
                            # config, which makes torch.compile throw away its first graph and compile again.
                            problem_type="single_label_classification")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=False, **head_options)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {_describe(model_id_or_path, revision)}: {err}") from err
    return model, tokenizer


def resolve_model_folder(model_id_or_path: str, revision: str | None = None) -> Path:
    """The local folder holding the model: the folder itself, or the HF-cache snapshot of a Hub repo.

    Tokenizer and weights then come from one snapshot, i.e. one commit, even if the branch moves while
    loading. ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the HF cache apply as in any huggingface_hub call.
    The snapshot folder is named after the commit sha it holds.
    """
    folder = Path(model_id_or_path)
    if folder.is_dir():
        if revision:
            raise ModelLoadError(f"revision {revision!r} applies to Hub repo ids only, but {model_id_or_path!r} "
                                 "is a local folder")
        return folder
    try:
        return Path(snapshot_download(model_id_or_path, revision=revision or None,
                                      allow_patterns=LOADABLE_FILE_PATTERNS))
    except (OSError, ValueError) as err:  # every huggingface_hub lookup error is one of these
        raise ModelLoadError(f"cannot load model {_describe(model_id_or_path, revision)}: it is not a local folder, "
                             f"and the Hub lookup failed: {type(err).__name__}: {err}") from err


def _describe(model_id_or_path: str, revision: str | None) -> str:
    return f"{model_id_or_path!r}" + (f" at revision {revision!r}" if revision else "")


def _refuse_pickle_only_folder(folder: Path, model_id_or_path: str, revision: str | None) -> None:
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickles = [name for name in PICKLE_WEIGHT_FILES if (folder / name).is_file()]
    found = f"only pickle weights ({', '.join(pickles)})" if pickles else "no safetensors weights"
    raise ModelLoadError(f"model {_describe(model_id_or_path, revision)} holds {found}; DistriNews loads safetensors "
                         "only because unpickling can run arbitrary code. Re-save the model with "
                         "save_pretrained(safe_serialization=True) and load that.")
