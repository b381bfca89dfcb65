"""What a training run decides on its validation outputs after training, and saves in the model's config.

    decisions = decide_on_validation(task, validation_outputs, config)   # same result on every rank
    where = fold_temperature(model, decisions.task.temperature)           # into the output layer, if it can
    split_report(decisions, split_outputs)                                # metrics.json's calibration and risk

In order, each on the previous one's output: the calibration temperature (``calibration``; core/calibration.py),
a multi-label model's per-label thresholds (``per_label_thresholds``, on the calibrated probabilities) and the
confidence floor (``target_precision``), the lowest at which the kept validation answers are right that often.
Every rank computes them from the same gathered outputs, so they agree without another collective.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.calibration import TEMPERATURE_RANGE, at_floor, calibration_scores, fit_temperature, \
    floor_for_precision, label_nll, reliability, trust_report
from ..core.tasks import MIN_POSITIVES_FOR_OWN_THRESHOLD, MULTI_LABEL, Task
from .config import TrainConfig
from .evaluation import SplitOutputs


@dataclass
class Decisions:
    task: Task  # the task with the temperature, thresholds and floor chosen
    uncalibrated: Task  # the same task without the temperature: the "before" of the calibration report
    report: dict = field(default_factory=dict)  # metrics.json's decision_threshold, calibration and abstention


def decide_on_validation(task: Task, validation: SplitOutputs | None, config: TrainConfig) -> Decisions:
    """The temperature, the thresholds and the floor, each chosen on validation when asked for and possible."""
    decisions = Decisions(task=task.with_temperature(None), uncalibrated=task.with_temperature(None))
    _calibrate(decisions, validation, config)
    _choose_thresholds(decisions, validation, config)
    _choose_floor(decisions, validation, config)
    return decisions


def _calibrate(decisions: Decisions, validation: SplitOutputs | None, config: TrainConfig) -> None:
    if config.calibration == "none" or validation is None:
        why = "calibration=none" if config.calibration == "none" else "no validation split to fit it on"
        decisions.report["calibration"] = {"method": "none", "why": why}
        return
    task = decisions.task
    count = len(task.labels) if task.problem_type == MULTI_LABEL else 1

    def nll_at(temperatures: np.ndarray) -> np.ndarray:
        tempered = task.with_temperature(temperatures)
        return label_nll(tempered, validation.text_probabilities(tempered), validation.references)

    temperatures = fit_temperature(nll_at, count)
    decisions.task = task.with_temperature(temperatures)
    decisions.report["calibration"] = {"method": "temperature", "fitted_on": "validation",
                                       "temperature": [round(float(t), 6) for t in temperatures],
                                       "at_range_edge": bool(np.isin(temperatures, TEMPERATURE_RANGE).any())}


def _choose_thresholds(decisions: Decisions, validation: SplitOutputs | None, config: TrainConfig) -> None:
    """The multi-label thresholds: decision_threshold if given, else the best validation micro-F1's, then each
    label's own (per_label_thresholds); single-label models take the argmax and have none."""
    task = decisions.task
    if task.threshold is None:
        return
    given = config.decision_threshold
    probabilities = None if validation is None else validation.text_probabilities(task)
    if not given and probabilities is not None:
        task = task.with_threshold(task.best_threshold(probabilities, validation.references))
    how = "given (decision_threshold)" if given else "best validation micro-F1" if probabilities is not None else \
        "default (no validation split to choose it on)"
    entry = {"value": task.threshold, "chosen_by": how}
    if config.per_label_thresholds and probabilities is not None:
        task = task.with_thresholds(task.best_thresholds(probabilities, validation.references))
        entry.update(per_label=dict(zip(task.labels, task.thresholds)),
                     per_label_chosen_by=f"each label's best validation F1 (labels with fewer than "
                                         f"{MIN_POSITIVES_FOR_OWN_THRESHOLD} positive rows keep the global one)")
    decisions.task = task
    decisions.uncalibrated = decisions.uncalibrated.with_threshold(task.threshold).with_thresholds(task.thresholds)
    decisions.report["decision_threshold"] = entry


def _choose_floor(decisions: Decisions, validation: SplitOutputs | None, config: TrainConfig) -> None:
    target = config.target_precision
    if not target:
        return
    entry = {"target_precision": target, "chosen_on": "validation"}
    if validation is None:
        entry.update(floor=None, why="no validation split to choose it on")
    else:
        probabilities = validation.text_probabilities(decisions.task)
        floor = floor_for_precision(decisions.task, probabilities, validation.references, target)
        entry["floor"] = floor
        if floor is None:
            entry["why"] = "no floor keeps validation answers that are right this often"
        else:
            entry["validation"] = at_floor(decisions.task, probabilities, validation.references, floor)
    decisions.task = decisions.task.with_floor(entry["floor"])
    decisions.report["abstention"] = entry


def apply_to_model(decisions: Decisions, model) -> None:
    """Fold the temperature into ``model``'s output layer where it can (else it stays in the config as
    ``logit_temperature``, applied by distrinews' own predict path) and write the task into its config."""
    calibration = decisions.report.get("calibration", {})
    temperature = decisions.task.temperature
    folded_into = fold_temperature(model, temperature)
    if folded_into is not None:
        # The model's logits are now the calibrated ones: the task applies no temperature of its own, and the
        # uncalibrated scores are the new logits times T.
        decisions.task = decisions.task.with_temperature(None)
        decisions.uncalibrated = decisions.task.with_temperature(1.0 / np.asarray(temperature))
        calibration["applied"] = f"folded into the weights and bias of {folded_into}"
    elif temperature is not None:
        calibration["applied"] = ("config.logit_temperature: the logits are not one linear layer's output, so only "
                                  "distrinews' predict path (predict, evaluate, the Space) applies it")
    model.config.update(decisions.task.model_config())


def split_report(decisions: Decisions, outputs: SplitOutputs) -> dict:
    """A split's ``trust_report``, with its calibration scores and reliability before calibration too."""
    task, references = decisions.task, outputs.references
    report = trust_report(task, outputs.text_probabilities(task), references)
    if decisions.report.get("calibration", {}).get("method") == "temperature":
        before = outputs.text_probabilities(decisions.uncalibrated)
        report["calibration"] = {"before": calibration_scores(task, before, references), **report["calibration"]}
        report["reliability"] = {"before": [asdict(b) for b in reliability(task, before, references)],
                                 **report["reliability"]}
    return report


def fold_temperature(model, temperature: float | tuple[float, ...] | None) -> str | None:
    """Divide the output layer's weights and bias by the temperature(s), so the saved model's logits are the
    calibrated ones for every client (pipeline(), the ONNX graph, TEI, transformers.js). Returns the layer's name,
    or None (model unchanged) when the logits are not one linear layer's output."""
    import torch

    if temperature is None:
        return None
    found = output_layer(model)
    if found is None:
        return None
    name, layer = found
    with torch.no_grad():
        scale = 1.0 / torch.as_tensor(np.atleast_1d(temperature), dtype=layer.weight.dtype, device=layer.weight.device)
        layer.weight.mul_(scale[:, None])
        if layer.bias is not None:
            layer.bias.mul_(scale)
    return name


def output_layer(model):
    """(name, layer) of the linear layer whose output is the model's logits, or None: each linear layer with one
    output per label is watched through one forward pass of a probe batch, and the last whose output equals the
    logits is it (DistilBERT's ``classifier``, RoBERTa's ``classifier.out_proj``)."""
    import torch

    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Linear) and module.out_features == model.config.num_labels]
    outputs = {}
    hooks = [layer.register_forward_hook(lambda _module, _inputs, output, name=name: outputs.__setitem__(name, output))
             for name, layer in candidates]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**_probe_batch(model)).logits.float()
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for name, layer in reversed(candidates):
        output = outputs.get(name)
        if output is not None and output.shape == logits.shape and torch.equal(output.float(), logits):
            return name, layer
    return None


def _probe_batch(model) -> dict:
    import torch

    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, max(2, getattr(model.config, "vocab_size", 100)), (2, 8), generator=generator).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
