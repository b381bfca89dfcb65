"""The sections of a model card's body, each from the run's ``CardFacts`` (``distrinews.training.model_card``).

Single-label and multi-label models share every section; where they differ (what the model answers, the
confusion of the test split) the section says so from the task. Runs from before a setting existed have no such
key in their files, hence the ``.get`` with the value those runs had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.tasks import MULTI_LABEL
from ..core.windows import DEFAULT_MAX_WINDOWS
from .card_trust import trust_sections
from .extra_metrics import EXTRA_METRICS, FAILED, extra_scalars
from .mistakes import ERRORS_FILE, MISTAKES_KEPT

if TYPE_CHECKING:
    from .model_card import CardFacts


def body(facts: CardFacts) -> str:
    labels = list(facts.task.labels)
    sections = [
        *_summary(facts),
        *_intended_use(facts),
        *_how_to_use(facts),
        "## Labels",
        "| id | label |\n| --- | --- |\n" + "\n".join(f"| {i} | {name} |" for i, name in enumerate(labels)),
        *_evaluation(facts),
        *trust_sections(facts),
        *_training(facts),
        "## Framework versions",
        "\n".join(f"- {name}: {version}" for name, version in facts.metrics["train"]["versions"].items()),
        *_dataset_terms(facts),
    ]
    return "\n\n".join(sections) + "\n"


def _summary(facts: CardFacts) -> list[str]:
    train, test, task = facts.metrics["train"], facts.metrics["test"], facts.task
    architecture = (facts.model_config.get("architectures") or ["a sequence classifier"])[0]
    size = "" if not facts.num_parameters else f", {facts.num_parameters / 1e6:.1f}M parameters" \
        if facts.num_parameters >= 1e6 else f", {facts.num_parameters:,} parameters"
    if facts.preset and task.problem_type != MULTI_LABEL and labels_are_the_presets(facts):
        purpose = f"to sort English news into four topics: {', '.join(task.labels)}"
    elif task.problem_type == MULTI_LABEL:
        purpose = (f"to tag each text with every one of {len(task.labels)} labels that applies (any number, none "
                   f"included; a label is given at probability >= {task.threshold:g}): {_listed(task.labels)}")
    else:
        purpose = f"to sort text into one of {len(task.labels)} labels: {_listed(task.labels)}"
    scores = ", ".join(f"{name} {value:.4f}" for name, value in facts.headline(test))
    return [f"# {facts.model_name}",
            f"{architecture} ({facts.base}{size}) fine-tuned on {facts.dataset_name} {purpose}. It was trained with "
            f"DistriNews (data-parallel training with 🤗 Accelerate on {train['num_processes']} process(es)).\n\n"
            f"**Test {scores}** on {test['num_examples']:,} {_test_split_name(facts)} examples{_subset_note(facts)}."]


def labels_are_the_presets(facts: CardFacts) -> bool:
    return tuple(facts.task.labels) == facts.preset.label_names


def _test_split_name(facts: CardFacts) -> str:
    carved = _carved(facts).get("test")
    return f"{facts.dataset_name} test" if not carved else f"held-out ({carved})"


def _subset_note(facts: CardFacts) -> str:
    test, preset = facts.metrics["test"], facts.preset
    if not preset or _carved(facts).get("test") or test["num_examples"] == preset.test_size:
        return ""
    return f" (the full {preset.name} test set has {preset.test_size:,}; this run evaluated a subset)"


def _intended_use(facts: CardFacts) -> list[str]:
    task, config = facts.task, facts.config
    what = f"Texts like those {facts.model_name} was trained on" if not facts.preset else \
        f"{facts.preset.domain[0].upper()}{facts.preset.domain[1:]}, as in {facts.preset.name}"
    answers = ("every label whose probability reaches its decision threshold, which may be none"
               if task.problem_type == MULTI_LABEL else f"one of the {len(task.labels)} labels, even for text unlike "
               "its training data")
    if task.abstain_below is not None:
        answers += f", flagged \"not sure\" when its confidence is under {task.abstain_below:.4f} (see below)"
    dated = " The data is from around 2004-2005, so recent topics and vocabulary are under-represented." \
        if facts.preset else ""
    return ["## Intended use and limitations",
            f"{what}, classified into the labels below. A text longer than {config['max_length']} tokens is read "
            f"in overlapping windows of that many, up to {DEFAULT_MAX_WINDOWS}, whose probabilities are combined: "
            "the metrics below were measured so, and the Space reads texts so. The model always answers with "
            f"{answers}.{dated} It is not meant for decisions about people or for content moderation."]


def _how_to_use(facts: CardFacts) -> list[str]:
    shown_repo = facts.repo_id or "USER/NAME"
    placeholder_note = "" if facts.repo_id else (
        "\n`USER/NAME` stands for the repo this model is pushed to (or use the path of this folder).\n")
    if facts.task.problem_type == MULTI_LABEL:
        which = "its own threshold (config.decision_thresholds)" if facts.task.thresholds is not None else \
            f"{facts.task.threshold:g} (config.decision_threshold)"
        scores = (f"# every label's own probability (a sigmoid each: they need not sum to 1); the labels it gives "
                  f"are those at or above {which}:\n")
    else:
        scores = "# every class with its probability:\n"
    return ["## How to use",
            "```python\nfrom transformers import pipeline\n\n"
            f'classifier = pipeline("text-classification", model="{shown_repo}")\n'
            'classifier("Stocks rally as oil prices slide after OPEC meeting")\n'
            f"{scores}"
            'classifier("Stocks rally as oil prices slide after OPEC meeting", top_k=None)\n```\n\n'
            "Pin the exact weights you tested with a commit sha: "
            f'`pipeline("text-classification", model="{shown_repo}", revision="COMMIT_SHA")`. '
            "With DistriNews installed:\n\n"
            f'```bash\ndistrinews predict --model {shown_repo} "Stocks rally as oil prices slide" --json\n```'
            + placeholder_note]


def _evaluation(facts: CardFacts) -> list[str]:
    metrics, labels = facts.metrics, list(facts.task.labels)
    test, validation = metrics["test"], metrics["validation"]
    names = [name for name, _ in facts.headline(test)]
    carved = _carved(facts).get("test")
    test_sentence = f"Test: carved from the training data ({carved}), not an official test set; never used for " \
                    "training or model selection." if carved else \
        f"Test: the {facts.dataset_name} test split, never used for training or model selection."
    return ["## Evaluation",
            f"{_validation_sentence(facts)} {_selection_sentence(facts)}{_threshold_sentence(facts)} "
            f"{test_sentence}\n\n"
            f"| split | examples | {' | '.join(names)} |\n| --- | ---: |" + " ---: |" * len(names) + "\n"
            + "\n".join(f"| {name} | {split['num_examples']:,} | "
                        + " | ".join(f"{value:.4f}" for _, value in facts.headline(split)) + " |"
                        for name, split in (("validation", validation), ("test", test)) if split),
            _per_class_table("Test", test, labels),
            *([_per_class_table("Validation", validation, labels)] if validation else []),
            _confusion_section(test, labels),
            *_most_confused_section(facts),
            *_extra_metrics_section(facts)]


def _most_confused_section(facts: CardFacts) -> list[str]:
    pairs = facts.metrics["test"].get("most_confused")
    if pairs is None:  # a run from before the pairs were recorded
        return []
    mistakes = (f"The test texts it got wrong most confidently (up to {MISTAKES_KEPT}), with every probability, are "
                f"in `{ERRORS_FILE}` in the run folder (not pushed: it quotes the data).")
    if not pairs:
        return [f"No two labels were confused on test. {mistakes}"]
    if facts.task.problem_type == MULTI_LABEL:
        intro = ("The labels most often mistaken for one another on test (a label missed and another given instead, "
                 "in one text):")
        header = "| label missed | label given instead | texts | share of the missed label's texts |"
    else:
        intro = "The labels most often confused on test:"
        header = "| true label | predicted | texts | share of the true label's texts |"
    rows = "\n".join(f"| {pair['true']} | {pair['predicted']} | {pair['count']} | {pair['share_of_true']:.1%} |"
                     for pair in pairs)
    return [f"{intro}\n\n{header}\n| --- | --- | ---: | ---: |\n{rows}\n\n{mistakes}"]


def _extra_metrics_section(facts: CardFacts) -> list[str]:
    splits = [(name, facts.metrics[name]) for name in ("validation", "test") if facts.metrics[name]]
    results = {name: split.get(EXTRA_METRICS) or {} for name, split in splits}
    if not any(results.values()):
        return []
    shown = {name: {**extra_scalars(values), **{metric: f"failed: {entry[FAILED]}" for metric, entry in
                                                 values.items() if FAILED in entry}}
             for name, values in results.items()}
    rows = dict.fromkeys(key for values in shown.values() for key in values)
    table = "\n".join(f"| {row} | " + " | ".join(_shown_value(shown[name].get(row)) for name, _ in splits) + " |"
                      for row in rows)
    names = ", ".join(f"`{name}`" for name in dict.fromkeys(key for values in results.values() for key in values))
    return [f"Further metrics, computed with the 🤗 evaluate library ({names}):\n\n"
            f"| metric | {' | '.join(name for name, _ in splits)} |\n| --- |"
            + " ---: |" * len(splits) + f"\n{table}"]


def _shown_value(value) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value) if isinstance(value, int) \
        else f"{value:.4f}"


def _confusion_section(test: dict, labels: list[str]) -> str:
    if "label_confusion" in test:
        counts = test["label_confusion"]
        return ("Test confusion per label (each label decided on its own):\n\n| label | true positive | false "
                "negative | false positive | true negative |\n| --- | ---: | ---: | ---: | ---: |\n"
                + "\n".join(f"| {name} | {counts[name]['true_positive']} | {counts[name]['false_negative']} | "
                            f"{counts[name]['false_positive']} | {counts[name]['true_negative']} |" for name in labels)
                + "\n\n![Test confusion per label](confusion_matrix.png)")
    return ("Test confusion matrix (rows: true label, columns: predicted):\n\n"
            "| true \\ predicted | " + " | ".join(labels) + " |\n| --- |" + " ---: |" * len(labels) + "\n"
            + "\n".join(f"| {name} | " + " | ".join(str(count) for count in row) + " |"
                        for name, row in zip(labels, test["confusion_matrix"]))
            + "\n\n![Test confusion matrix](confusion_matrix.png)")


def _training(facts: CardFacts) -> list[str]:
    metrics, config = facts.metrics, facts.config
    train, validation = metrics["train"], metrics["validation"]
    views = ': the articles, then each headline and each description alone' if config.get('headline_views') else ''
    metric = metrics.get("metric_for_best_model", "accuracy").replace("_", " ")
    return ["## Training",
            f"Data: {facts.data_source}, {train['train_examples']:,} training examples "
            f"{'after the held-out splits' if validation else '(no validation split held out)'}{views}.\n\n"
            "| hyperparameter | value |\n| --- | --- |\n"
            + "\n".join(f"| {key} | {value} |" for key, value in _hyperparameters(facts)),
            f"Training time: {_duration(train['train_seconds'])} of optimizer steps (evaluation and checkpointing "
            f"excluded), {train['samples_per_s']:,.1f} training examples/s, on {train['hardware']}. Training ended: "
            f"{metrics.get('training_ended', 'completed')}.\n\n"
            f"![Training loss{f' and validation {metric}' if validation else ''}](loss.png)"]


def _hyperparameters(facts: CardFacts) -> list[tuple[str, object]]:
    metrics, config = facts.metrics, facts.config
    train = metrics["train"]
    steps = f"{config['max_steps']} optimizer steps" if config["max_steps"] > 0 else \
        f"{config['num_train_epochs']:g} epoch(s)"
    return [
        ("base model", facts.base),
        ("problem type", facts.task.problem_type),
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
        ("class weights", _class_weights(facts)),
        ("R-Drop weight", config.get("rdrop_weight", 0.0) or "off"),
        ("headline views", "each headline and each description also trained on alone"
         if config.get("headline_views") else "off"),
        ("early stopping", _early_stopping(facts)),
        ("max sequence length", config["max_length"]),
        ("long texts in training", _train_windows(config)),
        ("length-grouped batches", config["group_by_length"]),
        ("seed", config["seed"]),
    ]


def _train_windows(config: dict) -> str:
    # A run from before train_windows read the first window only.
    if config.get("train_windows", "first") == "first":
        return "first window only"
    return f"every window, up to {config['max_train_windows']} per text, each with the text's label"


def _early_stopping(facts: CardFacts) -> str:
    config = facts.config
    if not config.get("early_stopping_patience"):
        return "off"
    return (f"after {config['early_stopping_patience']} evaluations without an improvement of validation "
            f"{facts.metrics['metric_for_best_model']} by more than {config['early_stopping_threshold']:g}")


def _class_weights(facts: CardFacts) -> str:
    weights = facts.metrics.get("class_weights")
    if not weights:
        return "none"
    how = "balanced" if facts.config.get("class_weights") == "balanced" else "given"
    kind = " (BCE pos_weight)" if facts.task.problem_type == MULTI_LABEL else ""
    return f"{how}{kind}: " + ", ".join(f"{name} {weight:.4g}" for name, weight in weights.items())


def _per_layer_rates(config: dict) -> str:
    head, decay = config.get("head_learning_rate", 0.0), config.get("layer_lr_decay", 1.0)
    return (f" (task head {head:g})" if head else "") + \
        (f", x{decay:g} per encoder layer further down" if decay != 1 else "")


def _validation_sentence(facts: CardFacts) -> str:
    validation, config = facts.metrics["validation"], facts.config
    if validation is None:
        return "Validation: none (`validation_fraction=0`): every training row was trained on."
    carved = _carved(facts).get("validation")
    if not carved:
        return f"Validation: the data's own validation split, {validation['num_examples']:,} examples."
    how = "stratified" if facts.task.problem_type != MULTI_LABEL else "random"
    return (f"Validation: {validation['num_examples']:,} examples held out ({how}) from the training data "
            f"(`validation_fraction={config['validation_fraction']}`, `seed={config['seed']}`).")


def _selection_sentence(facts: CardFacts) -> str:
    metrics = facts.metrics
    step, total = metrics["selected_step"], metrics["global_step"]
    if metrics["model_selection"] == "best_validation":
        metric = metrics.get("metric_for_best_model", "accuracy").replace("_", " ")
        return (f"The weights published are those of the evaluation with the best validation {metric} "
                f"(step {step} of {total}).")
    reported = "; validation was only reported" if metrics["validation"] else ""
    return f"The weights published are the final ones (step {step} of {total}){reported}."


def _threshold_sentence(facts: CardFacts) -> str:
    chosen = facts.metrics.get("decision_threshold")
    if not chosen:
        return ""
    scope = "then one per label (below)" if chosen.get("per_label") else "for every label"
    return f" Decision threshold: {chosen['value']:g} ({chosen['chosen_by']}), {scope}."


def _per_class_table(title: str, split: dict, labels: list[str]) -> str:
    rows = "\n".join(f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} | "
                     f"{scores['support']} |" for name, scores in ((name, split["per_class"][name]) for name in labels))
    return (f"{title} per class:\n\n| label | precision | recall | F1 | support |\n"
            f"| --- | ---: | ---: | ---: | ---: |\n{rows}")


def _dataset_terms(facts: CardFacts) -> list[str]:
    if facts.preset:
        return ["## Dataset, citation and terms",
                f"{facts.preset.terms} If you use the dataset, cite:\n\n```bibtex\n{facts.preset.citation}\n```"]
    return ["## Dataset and terms",
            f"Trained on {facts.data_source}. The model inherits that data's terms and biases: check its license "
            "and where its texts come from before using the model."]


def _carved(facts: CardFacts) -> dict:
    """How the run's held-out splits were carved from train, by split name."""
    if "data" not in facts.metrics:  # runs from before other data: AG News, validation carved from train
        return {"validation": f"{facts.config['validation_fraction']:.0%} of train, stratified"}
    return facts.metrics["data"].get("carved_splits") or {}


def _listed(names, shown: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.2f} h"
