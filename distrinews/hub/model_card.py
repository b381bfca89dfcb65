"""The model card (``model/README.md``) of a finished run, built from its ``metrics.json`` and ``train_config.json``.

The YAML header is produced by ``huggingface_hub.ModelCardData`` (with ``EvalResult`` entries for the
``model-index``), so the Hub, ``ModelCard.load`` and leaderboards read the same numbers the body shows.
The two plots are copied next to the card and referenced by relative path, so they render on the Hub
and in any local viewer of ``model/``. Writing the card needs no network and no torch.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..core.errors import ModelCardError

AG_NEWS_HUB_ID = "fancyzhx/ag_news"
AG_NEWS_TEST_SIZE = 7600
# DistilBERT, the default base model, is Apache-2.0; pass another license for a base model under other terms.
DEFAULT_LICENSE = "apache-2.0"
PLOTS = ("confusion_matrix.png", "loss.png")

CITATION = """\
@inproceedings{zhang2015character,
  title     = {Character-level Convolutional Networks for Text Classification},
  author    = {Zhang, Xiang and Zhao, Junbo and LeCun, Yann},
  booktitle = {Advances in Neural Information Processing Systems 28 (NIPS 2015)},
  pages     = {649--657},
  year      = {2015}
}"""

# "namespace/name", or a legacy id without namespace such as "distilbert-base-uncased".
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


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
    card = build_model_card(metrics, config, model_config, repo_id=repo_id, license=license,
                            num_parameters=_count_parameters(model_dir))
    path = model_dir / "README.md"
    card.save(path)
    return path


def build_model_card(metrics: dict, config: dict, model_config: dict, *, repo_id: str | None = None,
                     license: str = DEFAULT_LICENSE, num_parameters: int | None = None) -> ModelCard:
    """The card as a ``huggingface_hub.ModelCard``: metadata (with model-index) plus the markdown body."""
    model_name = repo_id.split("/")[-1] if repo_id else "distrinews-ag-news"
    base_model = _hub_id_or_none(config["model_name_or_path"])
    dataset_id = _hub_id_or_none(config["dataset"]) or AG_NEWS_HUB_ID
    test = metrics["test"]
    eval_results = [
        EvalResult(task_type="text-classification", task_name="Text Classification", dataset_type=dataset_id,
                   dataset_name="AG News", dataset_split="test", metric_type=metric_type, metric_name=metric_name,
                   metric_value=round(value, 4), metric_args=metric_args)
        for metric_type, metric_name, value, metric_args in (
            ("accuracy", "Accuracy", test["accuracy"], None),
            ("f1", "Macro F1", test["macro_f1"], {"average": "macro"}),
        )
    ]
    card_data = ModelCardData(
        language="en", license=license, library_name="transformers", pipeline_tag="text-classification",
        base_model=base_model, datasets=[dataset_id], metrics=["accuracy", "f1"],
        tags=["text-classification", "news", "ag-news", model_config.get("model_type", "transformer"),
              "distrinews", "accelerate"],
        model_name=model_name, eval_results=eval_results,
    )
    body = _body(metrics, config, model_config, repo_id=repo_id, model_name=model_name, base_model=base_model,
                 dataset_id=dataset_id, num_parameters=num_parameters)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _body(metrics, config, model_config, *, repo_id, model_name, base_model, dataset_id, num_parameters) -> str:
    labels = [model_config["id2label"][str(i)] for i in range(len(model_config["id2label"]))]
    base = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model else \
        f"a local copy of `{Path(config['model_name_or_path']).name}`"
    sections = [
        *_summary(metrics, model_config, labels, base, model_name, num_parameters),
        *_intended_use(config),
        *_how_to_use(repo_id),
        "## Labels",
        "| id | label |\n| --- | --- |\n" + "\n".join(f"| {i} | {name} |" for i, name in enumerate(labels)),
        *_evaluation(metrics, config, labels),
        *_training(metrics, config, base, dataset_id),
        "## Framework versions",
        "\n".join(f"- {name}: {version}" for name, version in metrics["train"]["versions"].items()),
        "## Dataset, citation and terms",
        "AG News (Zhang, Zhao and LeCun, 2015) was built from AG's corpus of news articles, collected by the "
        "ComeToMyHead academic news search engine and made available to the academic community for research and "
        "other non-commercial use; the dataset's Hub card lists its license as unknown. Check those terms before "
        "any commercial use of this model. If you use the dataset, cite:\n\n```bibtex\n" + CITATION + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def _summary(metrics, model_config, labels, base, model_name, num_parameters) -> list[str]:
    train, test = metrics["train"], metrics["test"]
    architecture = (model_config.get("architectures") or ["a sequence classifier"])[0]
    size = "" if not num_parameters else f", {num_parameters / 1e6:.1f}M parameters" if num_parameters >= 1e6 \
        else f", {num_parameters:,} parameters"
    subset = "" if test["num_examples"] == AG_NEWS_TEST_SIZE else \
        f" (the full AG News test set has {AG_NEWS_TEST_SIZE:,}; this run evaluated a subset)"
    return [f"# {model_name}",
            f"{architecture} ({base}{size}) fine-tuned on AG News to sort English news into four topics: "
            f"{', '.join(labels)}. It was trained with DistriNews (data-parallel "
            f"training with 🤗 Accelerate on {train['num_processes']} process(es)).\n\n"
            f"**Test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}** "
            f"on {test['num_examples']:,} AG News test examples{subset}."]


def _intended_use(config) -> list[str]:
    return ["## Intended use and limitations",
            "Topic classification of English news headlines and short article descriptions (title + description, "
            f"as in AG News) into the four classes above. Texts longer than {config['max_length']} tokens are "
            "truncated. AG News was collected from news sources around 2004-2005, so recent topics and vocabulary "
            "are under-represented, and the model always answers with one of the four topics, even for text that "
            "is not news. It is not meant for decisions about people or for content moderation."]


def _how_to_use(repo_id) -> list[str]:
    shown_repo = repo_id or "USER/NAME"
    placeholder_note = "" if repo_id else (
        "\n`USER/NAME` stands for the repo this model is pushed to (or use the path of this folder).\n")
    return ["## How to use",
            "```python\nfrom transformers import pipeline\n\n"
            f'classifier = pipeline("text-classification", model="{shown_repo}")\n'
            'classifier("Stocks rally as oil prices slide after OPEC meeting")\n'
            "# every class with its probability:\n"
            'classifier("Stocks rally as oil prices slide after OPEC meeting", top_k=None)\n```\n\n'
            "Pin the exact weights you tested with a commit sha: "
            f'`pipeline("text-classification", model="{shown_repo}", revision="COMMIT_SHA")`. '
            "With DistriNews installed:\n\n"
            f'```bash\ndistrinews predict --model {shown_repo} "Stocks rally as oil prices slide" --json\n```'
            + placeholder_note]


def _evaluation(metrics, config, labels) -> list[str]:
    test, validation = metrics["test"], metrics["validation"]
    return ["## Evaluation",
            f"{_validation_sentence(validation, config)} {_selection_sentence(metrics)} "
            "Test: the AG News test split, never used for training or model selection.\n\n"
            "| split | examples | accuracy | macro-F1 |\n| --- | ---: | ---: | ---: |\n"
            + "\n".join(f"| {name} | {split['num_examples']:,} | {split['accuracy']:.4f} | {split['macro_f1']:.4f} |"
                        for name, split in (("validation", validation), ("test", test)) if split),
            _per_class_table("Test", test, labels),
            *([_per_class_table("Validation", validation, labels)] if validation else []),
            "Test confusion matrix (rows: true label, columns: predicted):\n\n"
            "| true \\ predicted | " + " | ".join(labels) + " |\n| --- |" + " ---: |" * len(labels) + "\n"
            + "\n".join(f"| {name} | " + " | ".join(str(count) for count in row) + " |"
                        for name, row in zip(labels, test["confusion_matrix"]))
            + "\n\n![Test confusion matrix](confusion_matrix.png)"]


def _training(metrics, config, base, dataset_id) -> list[str]:
    train, validation = metrics["train"], metrics["validation"]
    data_source = f"[`{dataset_id}`](https://huggingface.co/datasets/{dataset_id})" \
        if _hub_id_or_none(config["dataset"]) else \
        f"a local copy in AG News format (folder `{Path(config['dataset']).name}`)"
    views = ': the articles, then each headline and each description alone' if config.get('headline_views') else ''
    return ["## Training",
            f"Data: {data_source}, {train['train_examples']:,} training examples "
            f"{'after the validation split' if validation else '(no validation split held out)'}{views}.\n\n"
            "| hyperparameter | value |\n| --- | --- |\n"
            + "\n".join(f"| {key} | {value} |" for key, value in _hyperparameters(metrics, config, base)),
            f"Training time: {_duration(train['train_seconds'])} of optimizer steps (evaluation and checkpointing "
            f"excluded), {train['samples_per_s']:,.1f} training examples/s, on {train['hardware']}.\n\n"
            f"![Training loss{' and validation accuracy' if validation else ''}](loss.png)"]


def _hyperparameters(metrics, config, base) -> list[tuple[str, object]]:
    train = metrics["train"]
    steps = f"{config['max_steps']} optimizer steps" if config["max_steps"] > 0 else \
        f"{config['num_train_epochs']:g} epoch(s)"
    return [
        ("base model", base),
        ("training length", f"{steps} ({metrics['global_step']} optimizer steps)"),
        ("processes (data-parallel replicas)", train["num_processes"]),
        ("machines", train["num_machines"]),
        ("distributed type", train["distributed_type"]),
        ("mixed precision", train["mixed_precision"]),
        ("per-device batch size", config["per_device_train_batch_size"]),
        ("gradient accumulation steps", config["gradient_accumulation_steps"]),
        ("effective batch size", f"{train['total_train_batch_size']} (= per-device batch x accumulation x processes)"),
        ("optimizer", f"AdamW, weight decay {config['weight_decay']} (not on biases and norms)"),
        ("learning rate", f"{config['learning_rate']:g}{_per_layer_rates(config)}, "
                          f"{config['lr_scheduler_type']} schedule, warmup ratio {config['warmup_ratio']}"),
        ("max gradient norm", config["max_grad_norm"] or "no clipping"),
        # .get: runs from before R-Drop existed have no such key.
        ("R-Drop weight", config.get("rdrop_weight", 0.0) or "off"),
        ("headline views", "each headline and each description also trained on alone"
         if config.get("headline_views") else "off"),
        ("max sequence length", config["max_length"]),
        ("length-grouped batches", config["group_by_length"]),
        ("seed", config["seed"]),
    ]


def _per_layer_rates(config: dict) -> str:
    # .get: runs from before these settings existed have no such keys.
    head, decay = config.get("head_learning_rate", 0.0), config.get("layer_lr_decay", 1.0)
    return (f" (task head {head:g})" if head else "") + \
        (f", x{decay:g} per encoder layer further down" if decay != 1 else "")


def _validation_sentence(validation: dict | None, config: dict) -> str:
    if validation is None:
        return "Validation: none (`validation_fraction=0`): every training row was trained on."
    return (f"Validation: {validation['num_examples']:,} examples held out (stratified) from the training data "
            f"(`validation_fraction={config['validation_fraction']}`, `seed={config['seed']}`).")


def _selection_sentence(metrics: dict) -> str:
    step, total = metrics["selected_step"], metrics["global_step"]
    if metrics["model_selection"] == "best_validation":
        return (f"The weights published are those of the evaluation with the best validation accuracy "
                f"(step {step} of {total}).")
    reported = "; validation was only reported" if metrics["validation"] else ""
    return f"The weights published are the final ones (step {step} of {total}){reported}."


def _per_class_table(title: str, split: dict, labels: list[str]) -> str:
    rows = "\n".join(f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} | "
                     f"{scores['support']} |" for name, scores in ((name, split["per_class"][name]) for name in labels))
    return (f"{title} per class:\n\n| label | precision | recall | F1 | support |\n"
            f"| --- | ---: | ---: | ---: | ---: |\n{rows}")


def _hub_id_or_none(value: str) -> str | None:
    # A local folder says nothing the Hub can link to (and its full path is nobody else's business).
    return value if _REPO_ID.match(value) and ".." not in value and not Path(value).exists() else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.2f} h"


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
