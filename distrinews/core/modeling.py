"""The one way DistriNews loads models: a local folder or a Hub repo id (+ revision).

Used by training (to start from a base model), ``distrinews evaluate``/``predict``, the notebook, the
Space and the tests. Weights load from safetensors only and remote code never runs: a model repo is
untrusted input. ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the HF cache are honoured by huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, \
    PreTrainedTokenizerBase

from .tasks import Task
from .model_files import PICKLE_WEIGHT_FILES, ModelLoadError, describe_model, resolve_model_folder

__all__ = ["ModelLoadError", "load_classifier", "resolve_model_folder"]


def load_classifier(model_id_or_path: str, revision: str | None = None, *, for_training: bool = False,
                    task: Task | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a folder or a Hub repo id at ``revision`` (branch, tag or commit).

    With ``for_training`` the classification head is (re)sized to ``task``'s labels, and their names, the problem
    type and (multi-label) the decision threshold are written into the config, so ``pipeline("text-classification")``
    prints names, not LABEL_0, and applies the softmax or sigmoid the model was trained with.
    """
    if for_training and task is None:
        raise TypeError("load_classifier(for_training=True) needs the task the new head is for")
    folder = resolve_model_folder(model_id_or_path, revision)
    _refuse_pickle_only_folder(folder, model_id_or_path, revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        if not for_training:
            model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True,
                                                                       trust_remote_code=False)
        else:
            model = _fresh_head(folder, task)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {describe_model(model_id_or_path, revision)}: {err}") from err
    return model, tokenizer


def _fresh_head(folder: Path, task: Task) -> PreTrainedModel:
    # The config is set before the weights load: problem_type inferred on the first forward instead would mutate
    # the config, which makes torch.compile throw away its first graph and compile again; and decision_threshold
    # is no argument from_pretrained knows.
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    config.update(task.model_config())
    # transformers 5 loads weights in their saved dtype by default; training needs fp32 master weights (mixed
    # precision comes from autocast), whatever dtype the checkpoint was saved in.
    return AutoModelForSequenceClassification.from_pretrained(
        folder, config=config, dtype=torch.float32, ignore_mismatched_sizes=True, use_safetensors=True,
        trust_remote_code=False)


def _refuse_pickle_only_folder(folder: Path, model_id_or_path: str, revision: str | None) -> None:
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickles = [name for name in PICKLE_WEIGHT_FILES if (folder / name).is_file()]
    found = f"only pickle weights ({', '.join(pickles)})" if pickles else "no safetensors weights"
    raise ModelLoadError(f"model {describe_model(model_id_or_path, revision)} holds {found}; DistriNews loads "
                         "safetensors only because unpickling can run arbitrary code. Re-save the model with "
                         "save_pretrained(safe_serialization=True) and load that.")
