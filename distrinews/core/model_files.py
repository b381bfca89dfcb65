"""Where a model's files are, and what serving reads from them without torch or transformers.

``resolve_model_folder`` turns a local folder or a Hub repo id (+ revision) into one local folder (for the Hub: the
HF-cache snapshot of one commit), used by the one loader (``distrinews.core.modeling.load_classifier``) and by the
Space. ``read_serving_files`` reads what the Space needs besides the graph: the task (label names, problem type,
decision threshold), the longest input and the tokenizer, straight from ``config.json``, ``tokenizer_config.json``
and ``tokenizer.json``, so a Space serving a shipped int8 graph never imports torch or transformers (seconds of
every cold start).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .tasks import Task, task_from_config

PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
# What loading a classifier needs: config, safetensors weights and tokenizer files, plus the model card (the
# Space shows its test metrics, from the same commit as the weights). An allow-list, so pickle weights,
# ONNX/TF/Flax exports and images in the repo are never even downloaded.
LOADABLE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "README.md"]
# Tokenizers without a limit report a huge sentinel (int(1e30)) as their maximum length.
_NO_LIMIT = 100_000


def max_input_length(*limits: Any) -> int:
    """The smaller of the model's and the tokenizer's length limits, ignoring missing ones and sentinels."""
    return min((n for n in limits if isinstance(n, int) and 0 < n < _NO_LIMIT), default=512)


def describe_model(model_id_or_path: str, revision: str | None) -> str:
    return f"{model_id_or_path!r}" + (f" at revision {revision!r}" if revision else "")


def resolve_model_folder(model_id_or_path: str, revision: str | None = None,
                         extra_patterns: tuple[str, ...] = ()) -> Path:
    """The local folder holding the model: the folder itself, or the HF-cache snapshot of a Hub repo.

    Tokenizer and weights then come from one snapshot, i.e. one commit, even if the branch moves while
    loading. ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the HF cache apply as in any huggingface_hub call.
    The snapshot folder is named after the commit sha it holds. ``extra_patterns`` are downloaded too
    (the Space asks for the shipped int8 graph).
    """
    folder = Path(model_id_or_path)
    if folder.is_dir():
        if revision:
            raise ModelLoadError(f"revision {revision!r} applies to Hub repo ids only, but {model_id_or_path!r} "
                                 "is a local folder")
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id_or_path, revision=revision or None,
                                      allow_patterns=[*LOADABLE_FILE_PATTERNS, *extra_patterns]))
    except (OSError, ValueError) as err:  # every huggingface_hub lookup error is one of these
        raise ModelLoadError(f"cannot load model {describe_model(model_id_or_path, revision)}: it is not a local "
                             f"folder, and the Hub lookup failed: {type(err).__name__}: {err}") from err


@dataclass
class ServingFiles:
    """What a served classifier is besides its weights, read from the model's own files."""

    task: Task
    max_length: int  # the most tokens the model can read
    tokenizer: Any  # a ``tokenizers.Tokenizer``
    pad_id: int
    truncation_side: str


def read_serving_files(folder: Path) -> ServingFiles | None:
    """Labels, maximum length and the Rust tokenizer from ``folder``; None when the folder has no
    ``tokenizer.json`` (a slow-only tokenizer: the caller loads it through transformers)."""
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    from tokenizers import Tokenizer

    config = _read_json(folder / "config.json")
    tokenizer_config = _read_json(folder / "tokenizer_config.json", missing_ok=True)
    task = task_from_config(config)
    if not task.labels:
        raise ModelLoadError(f"{folder / 'config.json'} names no labels (id2label); is this a classifier?")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    pad_token = tokenizer_config.get("pad_token")
    pad_id = tokenizer.token_to_id(pad_token) if isinstance(pad_token, str) else None
    return ServingFiles(task=task,
                        max_length=max_input_length(config.get("max_position_embeddings"),
                                                    tokenizer_config.get("model_max_length")),
                        tokenizer=tokenizer, pad_id=pad_id if pad_id is not None else 0,
                        truncation_side=tokenizer_config.get("truncation_side") or "right")


def _read_json(path: Path, missing_ok: bool = False) -> dict:
    if missing_ok and not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return value
