"""Model selection and early stopping: which evaluation was the best, and when to stop looking for a better one.

Both compare ``metric_for_best_model`` on validation, as the HF Trainer's ``load_best_model_at_end`` and
``EarlyStoppingCallback`` do. The best weights are those of the best value so far (strictly better replaces
it). The patience counts evaluations in a row that did not beat the best by more than
``early_stopping_threshold``; at ``early_stopping_patience`` of them training stops. Every rank evaluates the
same gathered metrics, so all ranks decide the same at the same step without another collective, and the
count lives in the ``TrainerState``, so an exact resume keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import TrainerState
from .config import TrainConfig


@dataclass(frozen=True)
class Selection:
    metric: str
    greater_is_better: bool
    patience: int = 0  # 0: never stop early
    threshold: float = 0.0

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Selection":
        return cls(config.selection_metric(), config.greater_is_better(), config.early_stopping_patience,
                   config.early_stopping_threshold)

    def record(self, state: TrainerState, metrics: dict, step: int) -> bool:
        """Take one validation result into ``state``; returns whether it is the new best."""
        value = metrics[self.metric]
        best = state.best_metric
        if best is None or self._better(value, best, by=0.0):
            state.evaluations_without_improvement = 0 if best is None or self._better(value, best, self.threshold) \
                else state.evaluations_without_improvement + 1
            state.best_metric, state.best_step = value, step
            improved = True
        else:
            state.evaluations_without_improvement += 1
            improved = False
        if self.patience and state.evaluations_without_improvement >= self.patience:
            state.stop_reason = (f"early stopping: validation {self.metric} did not improve by more than "
                                 f"{self.threshold:g} for {self.patience} evaluation(s) in a row (best "
                                 f"{state.best_metric:.4f} at step {state.best_step})")
        return improved

    def _better(self, value: float, best: float, by: float) -> bool:
        return value - best > by if self.greater_is_better else best - value > by
