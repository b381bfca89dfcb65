"""The model card (``model/README.md``) of a finished run, built from its ``metrics.json`` and ``train_config.json``.

The YAML header is produced by ``huggingface_hub.ModelCardData`` (with ``EvalResult`` entries for the
``model-index``), so the Hub, ``ModelCard.load`` and leaderboards read the same numbers the body shows: accuracy
and macro-F1 for one label per text, micro-F1, macro-F1 and subset accuracy for multi-label models. The body
(``distrinews.training.card_sections``) describes the data as the run recorded it: a dataset preset (AG News,
with its terms and citation) or any labelled text, a carved test split as such. The two plots are copied next
to the card and referenced by relative path, so they render on the Hub and in any local viewer of ``model/``.
Writing the card needs no network and no torch.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..core.errors import ModelCardError
from ..core.formats import AG_NEWS, DatasetPreset, dataset_display_name, preset_named
from ..core.tasks import MULTI_LABEL, Task, task_from_config
from . import card_sections
from .card_trust import TRUST_PLOTS

# DistilBERT, the default base model, is Apache-2.0; pass another license for a base model under other terms.
DEFAULT_LICENSE = "apache-2.0"
PLOTS = ("confusion_matrix.png", "loss.png")
# (metric_type, metric_name, key in metrics.json, metric_args) of the model-index, per problem type
MODEL_INDEX_METRICS = {
    "single_label_classification": [("accuracy", "Accuracy", "accuracy", None),
                                    ("f1", "Macro F1", "macro_f1", {"average": "macro"})],
    MULTI_LABEL: [("f1", "Micro F1", "micro_f1", {"average": "micro"}),
                  ("f1", "Macro F1", "macro_f1", {"average": "macro"}),
                  ("accuracy", "Subset accuracy", "subset_accuracy", None)],
}

# "namespace/name", or a legacy id without namespace such as "distilbert-base-uncased".
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class CardFacts:
    """What every section reads: the run's files, and what they say about the model and its data."""

    metrics: dict
    config: dict
    model_config: dict
    task: Task
    preset: DatasetPreset | None
    dataset_name: str
    dataset_id: str | None  # a Hub dataset to link to, if any
    base_model: str | None  # a Hub model to link to, if any
    model_name: str
    repo_id: str | None
    num_parameters: int | None

    @classmethod
    def of(cls, metrics: dict, config: dict, model_config: dict, repo_id: str | None,
           num_parameters: int | None) -> "CardFacts":
        data = metrics.get("data") or {"preset": AG_NEWS.key}  # runs from before other data: AG News
        preset = preset_named(data.get("preset"))
        hub_dataset = _hub_id_or_none(config["dataset"])
        return cls(metrics=metrics, config=config, model_config=model_config, task=task_from_config(model_config),
                   preset=preset, dataset_name=dataset_display_name(config["dataset"], preset),
                   dataset_id=hub_dataset or (preset.hub_ids[0] if preset else None),
                   base_model=_hub_id_or_none(config["model_name_or_path"]),
                   model_name=repo_id.split("/")[-1] if repo_id else _default_model_name(preset),
                   repo_id=repo_id, num_parameters=num_parameters)

    @property
    def base(self) -> str:
        return f"[`{self.base_model}`](https://huggingface.co/{self.base_model})" if self.base_model else \
            f"a local copy of `{Path(self.config['model_name_or_path']).name}`"

    @property
    def data_source(self) -> str:
        if _hub_id_or_none(self.config["dataset"]):
            return f"[`{self.dataset_id}`](https://huggingface.co/datasets/{self.dataset_id})"
        layout = f" in {self.preset.name} format" if self.preset else ""
        return f"a local copy{layout} (folder `{Path(self.config['dataset']).name}`)"

    def headline(self, split: dict) -> list[tuple[str, float]]:
        """(name, value) of the split's model-index metrics, as the card's tables show them."""
        return [(name, split[key]) for _, name, key, _ in MODEL_INDEX_METRICS[self.task.problem_type]]


def write_model_card(run_dir: str | Path, repo_id: str | None = None, *, license: str = DEFAULT_LICENSE) -> Path:
    """Write ``run_dir/model/README.md`` and copy the plots beside it; return the card's path.

    ``repo_id`` is the Hub repo the model is (or will be) pushed to; it goes into the usage snippet.
    Without it the snippet names ``USER/NAME`` as a placeholder.
    """
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    metrics = _read_json(run_dir / "metrics.json")
    config = _read_json(run_dir / "train_config.json")
    model_config = _read_json(model_dir / "config.json")
    for name in PLOTS:
        source = run_dir / "plots" / name
        if not source.is_file():
            raise ModelCardError(f"{source} is missing: the card shows it, and a finished run writes it")
        shutil.copyfile(source, model_dir / name)
    for name in TRUST_PLOTS:  # runs from before calibration have none
        if (run_dir / "plots" / name).is_file():
            shutil.copyfile(run_dir / "plots" / name, model_dir / name)
    card = build_model_card(metrics, config, model_config, repo_id=repo_id, license=license,
                            num_parameters=_count_parameters(model_dir))
    path = model_dir / "README.md"
    card.save(path)
    return path


def build_model_card(metrics: dict, config: dict, model_config: dict, *, repo_id: str | None = None,
                     license: str = DEFAULT_LICENSE, num_parameters: int | None = None) -> ModelCard:
    """The card as a ``huggingface_hub.ModelCard``: metadata (with model-index) plus the markdown body."""
    facts = CardFacts.of(metrics, config, model_config, repo_id, num_parameters)
    test = metrics["test"]
    eval_results = [
        EvalResult(task_type="text-classification", task_name="Text Classification",
                   dataset_type=facts.dataset_id or facts.dataset_name, dataset_name=facts.dataset_name,
                   dataset_split="test", metric_type=metric_type, metric_name=metric_name,
                   metric_value=round(test[key], 4), metric_args=metric_args)
        for metric_type, metric_name, key, metric_args in MODEL_INDEX_METRICS[facts.task.problem_type]
    ]
    tags = ["text-classification", *(["multi-label"] if facts.task.problem_type == MULTI_LABEL else []),
            *(["news", facts.preset.key.replace("_", "-")] if facts.preset else []),
            model_config.get("model_type", "transformer"), "distrinews", "accelerate"]
    card_data = ModelCardData(
        language="en", license=license, library_name="transformers", pipeline_tag="text-classification",
        base_model=facts.base_model, datasets=[facts.dataset_id] if facts.dataset_id else None,
        metrics=["accuracy", "f1"], tags=tags, model_name=facts.model_name, eval_results=eval_results,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{card_sections.body(facts)}")


def _default_model_name(preset: DatasetPreset | None) -> str:
    return "distrinews-" + (preset.key.replace("_", "-") if preset else "classifier")


def _hub_id_or_none(value: str) -> str | None:
    # A local folder says nothing the Hub can link to (and its full path is nobody else's business).
    return value if _REPO_ID.match(value) and ".." not in value and not Path(value).exists() else None


def _count_parameters(model_dir: Path) -> int | None:
    """Parameters in the safetensors files, read from their headers (no torch, no loading)."""
    total = 0
    files = sorted(model_dir.glob("*.safetensors"))
    for path in files:
        with path.open("rb") as handle:
            header_size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_size))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total or None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelCardError(f"{path} is missing: the model card is built from a finished run folder "
                             "(model/, metrics.json, train_config.json, plots/)")
    return json.loads(path.read_text(encoding="utf-8"))
