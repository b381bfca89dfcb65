"""The model card's section on how far its probabilities can be trusted: calibration before and after, the
reliability diagram, what answering only the most confident texts buys (risk-coverage), the confidence floor and a
multi-label model's per-label thresholds. Read from ``metrics.json`` (distrinews/training/decisions.py writes it);
runs from before calibration existed have none of it and get no section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.calibration import TEMPERATURE_RANGE
from ..core.tasks import MULTI_LABEL

if TYPE_CHECKING:
    from .model_card import CardFacts

TRUST_PLOTS = ("reliability.png", "risk_coverage.png")


def trust_sections(facts: CardFacts) -> list[str]:
    metrics = facts.metrics
    if "calibration" not in metrics.get("test", {}):
        return []
    return ["## Calibration and abstention", _calibration(facts), _risk_coverage(facts),
            *([_thresholds(facts)] if (metrics.get("decision_threshold") or {}).get("per_label") else [])]


def _calibration(facts: CardFacts) -> str:
    method = facts.metrics.get("calibration") or {}
    splits = [(name, facts.metrics[name]) for name in ("validation", "test") if facts.metrics.get(name)]
    if method.get("method") != "temperature":
        why = method.get("why", "calibration=none")
        return (f"The probabilities are the model's raw scores, not calibrated ({why}).\n\n"
                + _scores_table(splits, ("after",)) + "\n\n![Reliability diagram](reliability.png)")
    temperatures = method["temperature"]
    shown = f"T = {temperatures[0]:.4g}" if len(temperatures) == 1 else \
        "one per label: " + ", ".join(f"{name} {t:.3g}" for name, t in zip(facts.task.labels, temperatures))
    if method.get("at_range_edge"):
        low, high = TEMPERATURE_RANGE
        shown += f", at the edge of the range searched, {low:g} to {high:g}: the raw scores were far from calibrated"
    kind = "each label's yes/no" if facts.task.problem_type == MULTI_LABEL else "the top label"
    return (f"The probabilities are calibrated by temperature scaling fitted on the validation split ({shown}): "
            f"{method.get('applied', '')}. A calibrated model's 80% is right about 80% of the time. Lower is better "
            f"for each score below; ECE bins {kind}'s probability into 15 equal-width bins. A single-label text read in "
            "one window keeps its answer (one read in several averages their tempered probabilities).\n\n" + _scores_table(splits, ("before", "after"))
            + "\n\n![Reliability diagram, before and after calibration](reliability.png)")


def _scores_table(splits, stages) -> str:
    header = " | ".join(f"{score} {stage}" for score in ("NLL", "Brier", "ECE") for stage in stages)
    rows = [f"| {name} | " + " | ".join(f"{split['calibration'][stage][key]:.4f}" for key in ("nll", "brier", "ece")
                                        for stage in stages) + " |"
            for name, split in splits]
    return f"| split | {header} |\n| --- |" + " ---: |" * (3 * len(stages)) + "\n" + "\n".join(rows)


def _risk_coverage(facts: CardFacts) -> str:
    test = facts.metrics["test"]
    what = "subset accuracy (every label right)" if facts.task.problem_type == MULTI_LABEL else "accuracy"
    rows = "\n".join(f"| {100 * p['coverage']:.0f}% | {100 * p['accuracy']:.2f}% | {p['floor']:.4f} |"
                     for p in test["risk_coverage"])
    return (f"Answering only the texts the model is most sure of (test split; {what} of the answers given):\n\n"
            f"| coverage | {what} | lowest confidence kept |\n| ---: | ---: | ---: |\n{rows}\n\n"
            f"{_floor_sentence(facts)}\n\n![Risk-coverage on test](risk_coverage.png)")


def _floor_sentence(facts: CardFacts) -> str:
    abstention = facts.metrics.get("abstention")
    floor = facts.task.abstain_below
    if floor is None:
        reason = f" ({abstention['why']})" if abstention and abstention.get("why") else ""
        return (f"No confidence floor is set{reason}: the model always answers. Clients can set one "
                "(`distrinews predict --min_confidence`, the Space's `MIN_CONFIDENCE`).")
    at_floor = facts.metrics["test"]["at_floor"]
    chosen = f", the lowest at which the validation answers kept were right at least " \
             f"{100 * abstention['target_precision']:g}% of the time" if abstention else ""
    accuracy = "no test text" if at_floor["accuracy"] is None else f"{100 * at_floor['accuracy']:.2f}% right"
    return (f"**Confidence floor {floor:.4f}** (config `abstain_below`{chosen}): a text whose confidence is under it "
            f"is answered \"not sure\" (`abstained: true`, with every probability and the best guess). On test it "
            f"answers {100 * at_floor['coverage']:.1f}% of the texts ({at_floor['kept']:,} of {at_floor['rows']:,}), "
            f"{accuracy}.")


def _thresholds(facts: CardFacts) -> str:
    entry = facts.metrics["decision_threshold"]
    rows = "\n".join(f"| {name} | {value:g} |" for name, value in entry["per_label"].items())
    return (f"Each label has its own decision threshold ({entry['per_label_chosen_by']}; config "
            f"`decision_thresholds`, in label order); the global one is {entry['value']:g}:\n\n"
            f"| label | threshold |\n| --- | ---: |\n{rows}")
