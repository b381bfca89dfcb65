"""The one typed training config: defaults, validation, YAML/JSON files and command-line flags.

Precedence: dataclass defaults < ``--config FILE`` < ``--field value`` flags. Process count and
mixed precision are *not* here: they belong to the accelerate YAML (``accelerate_configs/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from ..core.errors import ConfigError
from ..core.machine import PRECISION_CHOICES
from ..core.tasks import MULTI_LABEL, PROBLEM_TYPES, MultiLabelTask, SingleLabelTask, make_task
from ..core.windows import DEFAULT_MAX_WINDOWS

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MODEL_SELECTIONS = ("last", "best_validation")
REPORT_TO = ("none", "tensorboard", "wandb", "trackio", "all")
HUB_STRATEGIES = ("end", "checkpoint")
CALIBRATIONS = ("temperature", "none")
TRAIN_WINDOWS = ("all", "first")
SELECTION_METRICS = ("auto", *dict.fromkeys(SingleLabelTask.selection_metrics + MultiLabelTask.selection_metrics))

# What a field means for resuming (checkpoint.run_signature reads it, so no field can be forgotten):
SAME = "same"  # a checkpoint resumes only under the same value: it changes what the steps compute
DATA = "data"  # reaches training only through the training data, which the signature compares by content
DERIVED = "derived"  # compared through a value derived from it (examples per micro-batch, total steps)
FREE = "free"  # may differ between the attempts of one run (where files go, logging, the Hub, workers)
RESUME_KINDS = (SAME, DATA, DERIVED, FREE)


# Seeds feed numpy's and torch's generators, whose seeds are unsigned 32-bit numbers.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Bounds:
    """The numbers a field may hold: ``low``/``high`` are inclusive, unless ``low_open``/``high_open`` say not."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above_low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below_high = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above_low and below_high

    def rule(self) -> str:
        low, high = (value if isinstance(value, (int, type(None))) else f"{value:g}" for value in (self.low, self.high))
        if self.high is None:
            return f"must be {'>' if self.low_open else '>='} {low}"
        return f"must be in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _doc(text: str, choices: Sequence[str] = (), *, resume: str, minimum: float | None = None,
         above: float | None = None, maximum: float | None = None, below: float | None = None, note: str = "",
         **kwargs: Any) -> Any:
    """A config field: its help, what it means for resuming (``resume``: one of RESUME_KINDS), its allowed values
    (``choices``, or bounds on a number) and ``note``, which the error for a value out of bounds adds."""
    bounds = None
    if (minimum, above, maximum, below) != (None,) * 4:
        bounds = Bounds(low=above if above is not None else minimum, high=below if below is not None else maximum,
                        low_open=above is not None, high_open=below is not None)
    return field(metadata={"help": text, "choices": tuple(choices), "bounds": bounds, "note": note, "resume": resume},
                 **kwargs)


@dataclass
class TrainConfig:
    """Everything a training run needs to know, saved with the run as ``train_config.json``."""

    model_name_or_path: str = _doc(
        "Hub repo id or local folder of any AutoModelForSequenceClassification-compatible model.",
        default="distilbert-base-uncased", resume=SAME)
    dataset: str = _doc(
        "Hub dataset id (loaded with datasets.load_dataset) or a local folder holding a train file and optionally "
        "validation and test files (csv with a header, jsonl or parquet; or the original AG News CSVs), read as "
        "pandas reads them (a UTF-8 byte-order mark, CRLF line endings and an index column are fine).",
        default="fancyzhx/ag_news", resume=DATA)
    dataset_config_name: str = _doc("The Hub dataset's configuration (datasets.load_dataset's name).", default="",
                                    resume=DATA)
    dataset_revision: str = _doc("Branch, tag or commit sha of the Hub dataset (pin a sha to train on exactly the "
                                 "same rows again).", default="", resume=DATA)
    text_column_names: str = _doc(
        "The column holding the text, or several separated by commas, joined with text_column_delimiter "
        "(e.g. title,content). The original AG News CSVs give title,description as 'text'.", default="text",
        resume=DATA)
    text_column_delimiter: str = _doc("What joins several text columns.", default=" ", resume=DATA)
    label_column_name: str = _doc("The column holding the label (for multi-label: the list of labels).",
                                  default="label", resume=DATA)
    problem_type: str = _doc(
        "single_label_classification (one label per text: softmax, cross-entropy) or multi_label_classification "
        "(any number of labels, none included: a sigmoid per label, binary cross-entropy, every label at or above "
        "the decision threshold), as transformers names them.", choices=PROBLEM_TYPES,
        default="single_label_classification", resume=SAME)
    label_names: str = _doc(
        "Label names in label order, separated by commas. Integer labels index into them; string labels must be "
        "among them. Default: a ClassLabel column's names, the training split's string labels sorted, or "
        "LABEL_0.. for integers.", default="", resume=SAME)
    label_separator: str = _doc("Multi-label: what separates the labels in a CSV cell (e.g. '|' for "
                                "'sport|tech'); JSONL and Parquet hold lists instead.", default="", resume=DATA)
    output_dir: str = _doc("Run folder: model, metrics, logs, plots and checkpoints go here.",
                           default="runs/ag_news", resume=FREE)
    num_train_epochs: float = _doc("Epochs to train for (ignored when max_steps > 0).", default=3.0, minimum=0,
                                   resume=DERIVED)
    max_steps: int = _doc("Total optimizer steps; overrides num_train_epochs when > 0.", default=-1, minimum=-1,
                          resume=DERIVED)
    per_device_train_batch_size: int = _doc("Training examples per process per micro-batch.", default=32,
                                            minimum=1, resume=DERIVED)
    per_device_eval_batch_size: int = _doc("Evaluation examples per process per batch.", default=128, minimum=1,
                                           resume=FREE)
    learning_rate: float = _doc("Peak learning rate of AdamW.", default=5e-5, above=0, below=1, resume=SAME)
    head_learning_rate: float = _doc("Peak learning rate of the task head (the parameters outside the pretrained "
                                     "base model, plus a BERT-style pooler); 0 = learning_rate.", default=0.0,
                                     minimum=0, below=1, note=" (0 = learning_rate)", resume=SAME)
    layer_lr_decay: float = _doc("Layer-wise learning-rate decay: each encoder layer below the top trains at this "
                                 "factor times the rate of the one above it (1 = the same rate everywhere).",
                                 default=1.0, above=0, maximum=1, resume=SAME)
    rdrop_weight: float = _doc(
        "R-Drop (distrinews/training/rdrop.py): each batch runs twice with different dropout masks and the loss adds "
        "this weight times the symmetric KL divergence between the two predictions; 0 = off. A step costs ~2x.",
        default=0.0, minimum=0, note=" (0 = off)", resume=SAME)
    class_weights: str = _doc(
        "Weights of the labels in the loss: 'none', 'balanced' (rows / (labels x rows of the label), as "
        "scikit-learn; multi-label: rows without the label / rows with it, BCE's pos_weight) or one number per "
        "label in label order, separated by commas.", default="none", resume=SAME)
    weight_decay: float = _doc("AdamW weight decay (never applied to biases and LayerNorm weights).", default=0.01,
                               minimum=0, resume=SAME)
    warmup_ratio: float = _doc("Fraction of the optimizer steps spent warming the learning rate up.", default=0.06,
                               minimum=0, below=1, resume=SAME)
    lr_scheduler_type: str = _doc("Learning-rate schedule after warmup.", choices=LR_SCHEDULERS, default="linear",
                                  resume=SAME)
    max_length: int = _doc("Tokens per window: a longer text is read as overlapping windows of this many tokens "
                           "(distrinews/core/windows.py), in training, evaluation and serving alike.", default=128,
                           minimum=1, resume=DATA)
    train_windows: str = _doc(
        "How training reads a text longer than max_length: 'all' (each of its windows, up to max_train_windows, is "
        "a training example carrying the text's label) or 'first' (its first window only, the rest is never "
        "learned from). Every evaluation reads a text's windows as the Space does, whichever is set.",
        choices=TRAIN_WINDOWS, default="all", resume=DATA)
    max_train_windows: int = _doc(
        "train_windows=all: the windows of one training text trained on, from its start (each one costs as much as "
        "a text; evaluation and serving read up to the serving default).", default=DEFAULT_MAX_WINDOWS, minimum=1,
        maximum=DEFAULT_MAX_WINDOWS, resume=DATA)
    gradient_accumulation_steps: int = _doc("Micro-batches per optimizer step.", default=1, minimum=1, resume=SAME)
    max_grad_norm: float = _doc("Gradient clipping norm; 0 disables clipping.", default=1.0, minimum=0, resume=SAME)
    seed: int = _doc("Seed for the model head, data order, carved splits and dropout.", default=42, minimum=0,
                     maximum=MAX_SEED, resume=SAME)
    validation_fraction: float = _doc(
        "Fraction of train carved out (stratified; multi-label: random) as the validation split; 0 = no validation "
        "split, every training row is trained on (the data's own validation split, if it has one, is still used).",
        default=0.05, minimum=0, below=1, note=" (0 = no validation split)", resume=DATA)
    test_fraction: float = _doc(
        "Fraction of train carved out (stratified; multi-label: random) as the test split when the data has none "
        "(metrics.json and the model card say so); the data's own test split is always used.", default=0.1,
        minimum=0, below=1, note=" (0 = the data must have a test split)", resume=DATA)
    headline_views: bool = _doc(
        "Also train on each article's headline alone and its description alone (3 texts per article). Needs data "
        "that keeps the two apart: the original AG News CSVs do, the Hub copy joined them.", default=False,
        resume=DATA)
    max_train_samples: int = _doc("Use at most this many training examples (0 = all).", default=0, minimum=0,
                                  resume=DATA)
    max_eval_samples: int = _doc("Use at most this many validation and test examples (0 = all).", default=0,
                                 minimum=0, resume=SAME)
    eval_every: int = _doc("Evaluate on validation every N optimizer steps (0 = at each epoch end only).", default=0,
                           minimum=0, resume=SAME)
    model_selection: str = _doc(
        "Which weights become the model: 'last' (the final step's, as the HF Trainer keeps by default) or "
        "'best_validation' (the evaluation with the best metric_for_best_model). The default validation split "
        "is 5% of train: on the 5,000-row sample that is 250 rows, one row = 0.4 points, too few to choose "
        "between steps reliably.", choices=MODEL_SELECTIONS, default="last", resume=SAME)
    metric_for_best_model: str = _doc(
        "The validation metric that best_validation and early stopping compare: 'auto' (accuracy; multi-label: "
        "micro_f1), accuracy, macro_f1, micro_f1, subset_accuracy (multi-label) or loss; lower is better for loss "
        "only.", choices=SELECTION_METRICS, default="auto", resume=SAME)
    early_stopping_patience: int = _doc(
        "Stop training when metric_for_best_model has not improved by more than early_stopping_threshold for "
        "this many evaluations in a row (every rank at the same step; 0 = never stop early).", default=0,
        minimum=0, note=" (0 = never stop early)", resume=SAME)
    early_stopping_threshold: float = _doc("How much metric_for_best_model must improve to reset the patience.",
                                           default=0.0, minimum=0, resume=SAME)
    decision_threshold: float = _doc(
        "Multi-label: a label is given when its probability is at least this; 0 = the threshold with the best "
        "validation micro-F1 (0.5 without a validation split). Saved in the model's config.", default=0.0,
        minimum=0, below=1, note=" (0 = chosen on validation)", resume=SAME)
    per_label_thresholds: bool = _doc(
        "Multi-label: after the global threshold, give each label the threshold with its best validation F1 "
        "(labels with too few positive validation rows keep the global one). Saved in the model's config as "
        "decision_thresholds.", default=True, resume=FREE)
    calibration: str = _doc(
        "After training, fit a temperature on the validation split (one per label for multi-label) that makes the "
        "probabilities mean what they say, and fold it into the output layer ('temperature'), or leave the raw "
        "scores ('none'). A single-label text read in one window keeps its answer. Needs a validation split.",
        choices=CALIBRATIONS, default="temperature", resume=FREE)
    target_precision: float = _doc(
        "Choose the confidence floor (config abstain_below) as the lowest at which the validation answers kept are "
        "right this often (multi-label: every label right); answers under it say 'not sure' (abstained) "
        "everywhere the model is read. 0 = no floor.", default=0.0, minimum=0, below=1, note=" (0 = no floor)",
        resume=FREE)
    extra_metrics: str = _doc(
        "Further metrics computed with the Hugging Face evaluate library on validation and test at the end, separated "
        "by commas: a metric on the Hub (e.g. matthews_correlation, roc_auc; fetched once, then cached) or a local "
        "metric module (a .py file, or a folder holding FOLDER.py, defining an evaluate.Metric). Recorded in "
        "metrics.json, the tracker and the model card; a metric that cannot load or does not fit the task stops the "
        "run before training. Empty = the built-in metrics only (no network, evaluate not imported).", default="",
        resume=FREE)
    checkpoint_every: int = _doc("Write a resumable checkpoint every N optimizer steps (0 = at each epoch end only).",
                                 default=0, minimum=0, resume=FREE)
    keep_last: int = _doc("Complete checkpoints kept on disk (the newest ones).", default=2, minimum=1, resume=FREE)
    resume: str = _doc("'auto' (newest complete checkpoint in output_dir, if any), a checkpoint path, or 'none' "
                       "(start over, deleting output_dir's checkpoints). A checkpoint must come from the same settings.",
                       default="auto", resume=FREE)
    logging_steps: int = _doc("Log loss, learning rate and throughput every N optimizer steps.", default=20,
                              minimum=1, resume=FREE)
    report_to: str = _doc(
        "Experiment tracker that also receives the run's config, the logged training scalars and every evaluation "
        "(through accelerate's trackers, from the main process): tensorboard (files in output_dir/runs/RUN_NAME), "
        "wandb, trackio, 'all' (each of these installed) or 'none'. Needs the tracker's package "
        "(pip install tensorboard).", choices=REPORT_TO, default="none", resume=FREE)
    run_name: str = _doc("The run's name in the tracker (default: the name of the output_dir folder).", default="",
                         resume=FREE)
    group_by_length: bool = _doc("Batch examples of similar length together so padding is small.", default=True,
                                 resume=SAME)
    torch_compile: str = _doc("Compile the model with torch.compile: 'auto' (on CUDA only), 'true' or 'false'.",
                              choices=("auto", "true", "false"), default="auto", resume=FREE)
    cpu_dropout_masks: bool = _doc(
        "On the CPU, draw dropout masks from 16-bit random numbers (distrinews/training/cpu_dropout.py) instead of "
        "torch's per-element draws, which take a quarter of a bf16 training step there; same expected activations.",
        default=True, resume=SAME)
    dataloader_num_workers: int = _doc("Worker processes per data loader (0 = load in the training process).",
                                       default=2, minimum=0, resume=FREE)
    max_nonfinite_steps: int = _doc("Stop with an error after this many consecutive steps with a non-finite loss.",
                                    default=10, minimum=1, resume=FREE)
    ddp_timeout_seconds: int = _doc("How long a collective waits for a hung rank before the run fails (torchrun "
                                    "ends the others when a rank dies); keep it above the longest checkpoint write.",
                                    # ~31 years; much larger values overflow c10d's millisecond clock
                                    default=1800, minimum=1, maximum=10**9, resume=FREE)
    push_to_hub: bool = _doc("Push model/ with its model card to the Hub after the final test evaluation.",
                             default=False, resume=FREE)
    hub_model_id: str = _doc("Hub repo id USER/NAME to push to (required with push_to_hub and "
                             "hub_strategy=checkpoint).", default="", resume=FREE)
    hub_private: bool = _doc("Create the Hub repo as private.", default=False, resume=FREE)
    hub_revision: str = _doc("Branch to push to (default: main).", default="", resume=FREE)
    hub_strategy: str = _doc(
        "What goes to hub_model_id during training, as in the HF Trainer: 'end' (nothing; push_to_hub pushes the "
        "model at the end) or 'checkpoint' (also each newest checkpoint, into the repo's folder last-checkpoint/, "
        "uploaded in the background; with resume=auto a run that has no local checkpoint continues from it, e.g. "
        "in a new Kaggle session).", choices=HUB_STRATEGIES, default="end", resume=FREE)

    def __post_init__(self) -> None:
        self._coerce_types()
        self._check()
        self._check_labels_and_selection()

    # Derived values are computed here rather than stored twice.
    def total_train_batch_size(self, num_processes: int) -> int:
        """Examples per optimizer step across every process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * num_processes

    def total_steps(self, train_examples: int, num_processes: int) -> int:
        """Optimizer steps of the whole run on ``train_examples`` (the sampler drops each epoch's last partial
        global batch, so every rank runs the same steps)."""
        micro_batches = train_examples // (self.per_device_train_batch_size * num_processes)
        steps_per_epoch = micro_batches // self.gradient_accumulation_steps
        if steps_per_epoch == 0:
            raise ConfigError(f"{train_examples} training examples give no full optimizer step of "
                              f"{self.total_train_batch_size(num_processes)} examples")
        return self.max_steps if self.max_steps > 0 else math.ceil(self.num_train_epochs * steps_per_epoch)

    def label_name_list(self) -> tuple[str, ...]:
        return _comma_list(self.label_names)

    def text_columns(self) -> tuple[str, ...]:
        return _comma_list(self.text_column_names)

    def extra_metric_names(self) -> tuple[str, ...]:
        return _comma_list(self.extra_metrics)

    def class_weight_values(self) -> tuple[float, ...]:
        """The weights given as numbers (empty for 'none' and 'balanced')."""
        if self.class_weights in ("none", "balanced"):
            return ()
        return tuple(float(value) for value in _comma_list(self.class_weights))

    def selection_metric(self) -> str:
        """metric_for_best_model with 'auto' resolved for the problem type."""
        if self.metric_for_best_model != "auto":
            return self.metric_for_best_model
        return make_task(self.problem_type, ()).selection_metrics[0]

    def greater_is_better(self) -> bool:
        return self.selection_metric() != "loss"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def _coerce_types(self) -> None:
        # Values from YAML/JSON files arrive as whatever the file said; make them the declared type.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, _convert(value, f.type, f.name))
            except ConfigError:
                raise
            except (TypeError, ValueError):
                raise ConfigError(f"{f.name}={value!r}: expected {f.type}") from None

    def _check(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {rule}")

        for f in dataclasses.fields(self):  # every field's own bounds and choices, from its metadata
            value, bounds, choices = getattr(self, f.name), f.metadata["bounds"], f.metadata["choices"]
            if bounds is not None:
                need(value in bounds, f.name, bounds.rule() + f.metadata["note"])
            if choices:
                need(value in choices, f.name, f"must be one of {', '.join(choices)}")
        for name in ("model_name_or_path", "dataset", "output_dir"):
            need(bool(getattr(self, name).strip()), name, "must not be empty")
        need(self.max_steps > 0 or self.num_train_epochs > 0, "num_train_epochs", "must be > 0 when max_steps <= 0")
        need(self.resume in ("auto", "none") or Path(self.resume).is_dir(), "resume",
             "must be 'auto', 'none' or an existing checkpoint folder")
        if self.push_to_hub:
            need(_looks_like_repo_id(self.hub_model_id), "hub_model_id",
                 "push_to_hub needs hub_model_id as USER/NAME")
        if self.hub_strategy == "checkpoint":
            need(_looks_like_repo_id(self.hub_model_id), "hub_model_id",
                 "hub_strategy=checkpoint needs hub_model_id as USER/NAME (the repo the checkpoints go to)")


    def _check_labels_and_selection(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {rule}")

        multi_label = self.problem_type == MULTI_LABEL
        need(bool(self.text_columns()) and "" not in self.text_columns(), "text_column_names",
             "must name one column, or several separated by commas")
        need(bool(self.label_column_name.strip()), "label_column_name", "must not be empty")
        names = self.label_name_list()
        need("" not in names and len(set(names)) == len(names), "label_names",
             "must be distinct, non-empty names separated by commas")
        need(not names or len(names) >= 2, "label_names", "must name at least 2 labels")
        need(multi_label or not self.label_separator, "label_separator",
             "applies to problem_type=multi_label_classification only")
        need(self.validation_fraction + self.test_fraction < 1, "test_fraction",
             f"with validation_fraction={self.validation_fraction} leaves no training rows")
        need(self.class_weights in ("none", "balanced") or _all_positive_numbers(self.class_weights),
             "class_weights", "must be none, balanced or positive numbers separated by commas (one per label)")
        choices = ("auto", *make_task(self.problem_type, ()).selection_metrics)
        need(self.metric_for_best_model in choices, "metric_for_best_model",
             f"must be one of {', '.join(choices)} for problem_type={self.problem_type}")
        extra = self.extra_metric_names()
        need("" not in extra and len(set(extra)) == len(extra), "extra_metrics",
             "must be distinct metric names or paths separated by commas")
        need(multi_label or not self.decision_threshold, "decision_threshold",
             "applies to problem_type=multi_label_classification only (one label per text takes the most probable)")


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",")) if value.strip() else ()


def _all_positive_numbers(value: str) -> bool:
    try:
        numbers = [float(part) for part in _comma_list(value)]
    except ValueError:
        return False
    return bool(numbers) and all(0 < number < math.inf for number in numbers)


def _looks_like_repo_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and " " not in value


def _convert(value: Any, type_name: Any, name: str) -> Any:
    type_name = getattr(type_name, "__name__", type_name)
    if type_name == "bool":
        return parse_bool(value, name)
    if type_name == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}={value!r}: expected an integer")
        return int(value)
    if type_name == "float":
        result = float(value)
        if not math.isfinite(result):
            raise ConfigError(f"{name}={value!r}: must be a finite number")
        return result
    if type_name == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return str(value)
    return value


def parse_bool(value: Any, name: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: expected true or false")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of known fields; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value, not {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown field(s) {', '.join(unknown)}")
    return data


def build_parser(prog: str = "distrinews train") -> argparse.ArgumentParser:
    """Every ``TrainConfig`` field as ``--field``, its help showing the default and the allowed values.

    Parsed values default to "not given" (``SUPPRESS``), so a ``--config`` file can sit between the dataclass
    defaults and the flags; the help states the dataclass default instead."""
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, description="Fine-tune a text classifier on AG News or any labelled text "
        "(--dataset, --text_column_names, --label_column_name, --problem_type). Settings: the defaults "
        "below < a --config file < flags. Run it under `accelerate launch` for several processes or GPUs.")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of the fields below (flags override it).")
    add_field_flags(parser, [f.name for f in dataclasses.fields(TrainConfig)])
    # Not a field: the precision is accelerate's setting (its YAML, its --mixed_precision), and a run's config
    # means the same on any device. This flag gives it to a process that accelerate did not launch.
    parser.add_argument("--mixed_precision", choices=PRECISION_CHOICES, default=argparse.SUPPRESS,
                        help="The precision of this one process: auto is bf16 autocast over fp32 weights on a GPU or "
                             "CPU with bf16 units (AVX512_BF16, AMX), fp16 on older GPUs, fp32 on other CPUs. Under "
                             "accelerate launch, its YAML or its own --mixed_precision says it instead. (default: "
                             "'auto')")
    return parser


def add_field_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The ``TrainConfig`` fields ``names`` as ``--field`` flags, with their help, default and allowed values.

    Parsed values default to "not given" (``SUPPRESS``): whatever is not given keeps the dataclass default when
    the parsed values build a ``TrainConfig``, which also checks bounds and choices, for flags and files alike."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in names:
        f = fields[name]
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{text} (default: {f.default!r})"}
        if f.type in (bool, "bool"):
            # `--group_by_length` alone means true, `--group_by_length false` works too, and `--no_group_by_length`
            # is the HF Trainer's spelling of false.
            kwargs.update(nargs="?", const="true", metavar="BOOL")
            parser.add_argument(f"--{f.name}", **kwargs)
            parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=f"Same as --{f.name} false.")
        else:
            choices = f.metadata["choices"]
            kwargs["metavar"] = "{" + ",".join(choices) + "}" if choices else str(f.type).upper()
            parser.add_argument(f"--{f.name}", **kwargs)


def parse_precision_flag(argv: Sequence[str] | None = None) -> str:
    """The ``--mixed_precision`` of ``argv`` (``auto`` when not given)."""
    return vars(build_parser().parse_args(argv)).get("mixed_precision", "auto")


def parse_train_values(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The field values ``--config`` plus ``--field value`` flags give (flags win), not yet checked; the fields not
    given are absent."""
    args = vars(build_parser().parse_args(argv))
    values = load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    args.pop("mixed_precision", None)
    values.update(args)
    return values


def parse_train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Build the config from ``--config`` plus ``--field value`` flags (flags win)."""
    return TrainConfig(**parse_train_values(argv))
