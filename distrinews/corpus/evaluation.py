"""``distrinews evaluate --backend ...``: a labelled split scored on the corpus path, at its speed, with its sharding.

The split's texts are classified by ``CorpusModel`` (the Space's model and lanes, or torch in bf16/fp16 on a GPU) in
shards of ``shard_size`` texts, shard k on process k mod N under ``accelerate launch``; every window's logits are
gathered on the main process (``accelerate.utils.gather_object``) and scored by the training run's own scoring
(``score_outputs`` and ``trust_report``), so the report has every field of metrics.json's test entry.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from ..core.calibration import trust_report
from ..core.errors import DataError
from ..core.texts import clean_text
from .engine import CorpusModel, EngineOptions, processes_here


def evaluate_on_corpus_path(config, split: str, engine: EngineOptions, shard_size: int,
                            extra_metrics: Callable[[object], Sequence] = lambda task: (),
                            show: Callable[[str], None] = print) -> dict | None:
    """The metrics of ``split`` of the data ``config`` describes (``distrinews evaluate``'s data flags); None on
    every process but the main one. ``extra_metrics(task)`` gives the further metrics to compute."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from ..training.evaluation import SplitOutputs, labelled_split, score_outputs
    from ..training.process_group import end_process_group

    state = PartialState(cpu=not torch.cuda.is_available())
    with state.main_process_first():  # one process exports the int8 graph; the others find it in the cache
        model = CorpusModel.load(engine, str(state.device), processes_here(state))
    try:
        task = model.task
        config = dataclasses.replace(config, problem_type=task.problem_type)  # the model's, as the data is read
        rows = labelled_split(config, split, task)
        texts, references = rows["text"], np.asarray(rows["label"])
        _refuse_empty(texts, model.service.config.max_text_chars, config.dataset, split)
        if state.is_main_process:
            show(f"evaluating {split}: {len(texts)} texts on {model.describe()}; {state.num_processes} process(es), "
                 f"shards of {shard_size} texts")
        mine = {start: [p.window_logits for p in model.predict(texts[start:start + shard_size])]
                for number, start in enumerate(range(0, len(texts), shard_size))
                if number % state.num_processes == state.process_index}
    finally:
        model.close()
    shards = {start: logits for part in gather_object([mine]) for start, logits in part.items()}
    end_process_group(state)
    if not state.is_main_process:
        return None
    windows = [logits for start in sorted(shards) for logits in shards[start]]
    outputs = SplitOutputs(np.concatenate(windows).astype(np.float32), references,
                           np.repeat(np.arange(len(windows)), [len(w) for w in windows]))
    return {**score_outputs(task, outputs, extra_metrics=extra_metrics(task)),
            **trust_report(task, outputs.text_probabilities(task), references)}


def _refuse_empty(texts: Sequence[str], max_chars: int, dataset: str, split: str) -> None:
    """The Space refuses a text with nothing to classify in its first ``max_chars`` characters; so does this."""
    empty = next((i for i, text in enumerate(texts) if not clean_text(text[:max_chars])), None)
    if empty is not None:
        raise DataError(f"{dataset} {split} text {empty} has nothing to classify once cleaned (only whitespace, "
                        "control or invisible characters)")
