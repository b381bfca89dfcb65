"""``distrinews predict --input PATH_OR_HUB_ID --output FILE``: classify a whole corpus, in shards, on every process.

    distrinews predict --model USER/NAME --input articles/ --output labels.parquet
    accelerate launch --num_processes 2 -m distrinews predict --model USER/NAME --input USER/DATASET --output x.parquet

Every process reads the input in order (reading.py) and classifies the shards that are its own (shard k belongs to
process k mod N), skipping those already written (shards.py), on the Space's model and lanes (engine.py). Under
``accelerate launch`` the processes are accelerate's (one per GPU, or per machine); the main process then merges
the shards into the output. Killed at any moment and run again with the same command, the run continues from the
shards that were complete, and the output equals that of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.errors import DataError
from ..core.texts import clean_text
from ..training.process_group import end_process_group
from .engine import CorpusModel, EngineOptions, processes_here
from .reading import Corpus, InputRow, ReadOptions
from .shards import ShardFolder, ShardStats, output_columns, output_format, prediction_record, shard_name

BAD_ROW_CHOICES = ("skip", "stop")
DEFAULT_SHARD_ROWS = 1024


@dataclass(frozen=True)
class CorpusOptions:
    input: str
    output: str
    engine: EngineOptions
    read: ReadOptions = ReadOptions()
    split: str = "train"  # of a Hub dataset
    dataset_config_name: str = ""
    dataset_revision: str = ""
    shard_size: int = DEFAULT_SHARD_ROWS  # input rows per shard: the unit of resuming and of sharing out work
    on_bad_row: str = "skip"  # skip: report it and go on; stop: stop the run at it
    overwrite: bool = False
    quiet: bool = False  # no progress bar

    def settings(self) -> dict:
        """What changes an answer or the output's rows: a rerun with other settings is refused."""
        engine = self.engine
        return {"backend": engine.backend, "batch_size": engine.batch_size, "min_confidence": engine.min_confidence,
                "max_length": engine.max_length, "max_windows": engine.max_windows,
                "shard_size": self.shard_size, "on_bad_row": self.on_bad_row,
                "text_columns": list(self.read.text_columns), "text_delimiter": self.read.text_delimiter,
                "id_column": self.read.id_column, "format": output_format(Path(self.output))}


def run_corpus(options: CorpusOptions) -> int:
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # on a CPU, several processes run over gloo
    shards = ShardFolder(Path(options.output))
    corpus = Corpus(options.input, options.read, split=options.split, config_name=options.dataset_config_name,
                    revision=options.dataset_revision)
    complete = False
    if state.is_main_process:
        complete = shards.prepare(_identity(options, corpus), options.overwrite)
    state.wait_for_everyone()
    if complete or (not state.is_main_process and (shards.manifest() or {}).get("complete")):
        end_process_group(state)
        if state.is_main_process:
            print(f"{options.output} is complete already (its manifest: {shards.manifest_path}); --overwrite "
                  "classifies the input again", flush=True)
        return 0
    with state.main_process_first():  # one process exports the int8 graph; the others find it in the cache
        model = CorpusModel.load(options.engine, str(state.device), processes_here(state))
    try:
        return _classify(options, state, shards, corpus, model)
    finally:
        model.close()


def _identity(options: CorpusOptions, corpus: Corpus) -> dict:
    from ..core.model_files import resolve_model_folder
    from ..serving.service import resolved_revision

    folder = resolve_model_folder(options.engine.model, options.engine.revision or None)
    return {"model": {"id": options.engine.model, "revision": resolved_revision(options.engine.model, folder)},
            "input": corpus.fingerprint(), "settings": options.settings(),
            "source": options.input}  # where it was read from; the fingerprint says whether it is the same input


def _classify(options: CorpusOptions, state, shards: ShardFolder, corpus: Corpus, model: CorpusModel) -> int:
    main = state.is_main_process
    rows, id_column = _with_id_column(corpus.rows(), options)
    columns = output_columns(model.task.labels, id_column)
    total = corpus.count() if main else None
    if main:
        print(f"classifying {corpus.describe()} ({total if total is not None else 'an unknown number of'} rows) "
              f"with {options.engine.model}: {model.describe()}; {state.num_processes} process(es), shards of "
              f"{options.shard_size} rows in {shards.folder}", flush=True)
        if shards.done_count():
            print(f"resuming: {shards.done_count()} shard(s) are complete already and are not classified again",
                  flush=True)
    started, count = time.perf_counter(), 0
    with _progress(total, main and not options.quiet) as bar:
        for index, shard in _shards(rows, options.shard_size):
            count = index + 1
            if index % state.num_processes == state.process_index and not shards.is_done(index):
                stats, records = _classify_shard(shard, model, options, id_column)
                shards.write(index, records, stats, columns)
            if bar is not None:  # the processes go through the input side by side, each classifying its own shards
                bar.update(len(shard))
    end_process_group(state)  # every process's shards are written; the main process merges them alone
    if not main:
        return 0
    missing = shards.missing(count)
    if missing:
        raise DataError(f"shards {', '.join(map(shard_name, missing[:5]))}{' ...' if len(missing) > 5 else ''} of "
                        f"{count} are not in {shards.folder}: on several machines without a shared folder, copy every "
                        "machine's shards there and run the same command again to merge them")
    seconds = time.perf_counter() - started
    totals = shards.merge(count, columns, {"seconds_wall": round(seconds, 3), "processes": state.num_processes,
                                          "engine": model.describe()})
    _print_summary(options, shards, totals, seconds)
    return 0


def _with_id_column(rows: Iterator[InputRow], options: CorpusOptions) -> tuple[Iterator[InputRow], str | None]:
    """The rows, and the id column's name in the output: the one asked for, or ``id`` when the first row has one
    (read from the same stream: a Hub dataset is not opened twice)."""
    first = next(rows, None)
    rows = itertools.chain([first], rows) if first is not None else iter(())
    if options.read.id_column:
        return rows, options.read.id_column
    return rows, "id" if first is not None and first.id is not None else None


def _shards(rows: Iterator[InputRow], size: int) -> Iterator[tuple[int, list[InputRow]]]:
    shard: list[InputRow] = []
    index = 0
    for row in rows:
        shard.append(row)
        if len(shard) == size:
            yield index, shard
            shard, index = [], index + 1
    if shard:
        yield index, shard


def _classify_shard(rows: list[InputRow], model: CorpusModel, options: CorpusOptions,
                    id_column: str | None) -> tuple[ShardStats, list[dict]]:
    started = time.perf_counter()
    stats = ShardStats(rows=len(rows))
    good = []
    limit = model.service.config.max_text_chars
    for row in rows:
        problem = row.problem
        if problem is None and not clean_text(row.text[:limit]):  # the Space reads the first MAX_TEXT_CHARS
            problem = f"no text in its first {limit} characters"
        if problem is None:
            good.append(row)
            continue
        if options.on_bad_row == "stop":
            raise DataError(f"{row.where} (row {row.row}): {problem} (--on_bad_row stop; skip reports such rows in "
                            f"{Path(options.output).name}.bad_rows.jsonl and goes on)")
        stats.bad_rows.append({"row": row.row, "id": row.id, "where": row.where, "problem": problem})
    predictions = model.predict([row.text for row in good]) if good else []
    records = [prediction_record(row.row, row.id, id_column, prediction) for row, prediction in zip(good, predictions)]
    stats.classified = len(records)
    stats.abstained = sum(prediction.abstained for prediction in predictions)
    stats.labels = Counter(label for prediction in predictions for label in prediction.labels)
    stats.seconds = time.perf_counter() - started
    return stats, records


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info) -> None:
        return None


def _progress(total: int | None, shown: bool):
    if not shown:
        return _NoBar()
    from tqdm.auto import tqdm

    terminal = sys.stderr.isatty()
    # A terminal that reports no size (a bare pseudo-terminal) would hide the bar: tqdm fits it to the size.
    size = os.get_terminal_size(sys.stderr.fileno()) if terminal else os.terminal_size((0, 0))
    return tqdm(total=total, unit="rows", desc="classifying", ncols=size.columns or 100, nrows=size.lines or 24,
                mininterval=0.5 if terminal else 30, smoothing=0.1)


def _print_summary(options: CorpusOptions, shards: ShardFolder, totals: ShardStats, seconds: float) -> None:
    rate = totals.classified / seconds if seconds > 0 else 0.0
    print(f"{options.output}: {totals.rows} rows, {totals.classified} classified in {seconds:.1f} s "
          f"({rate:.1f} texts/s); {len(totals.bad_rows)} bad row(s)"
          + (f" in {shards.bad_rows_file}" if totals.bad_rows else ""), flush=True)
    if totals.classified:
        shares = ", ".join(f"{label} {count} ({count / totals.classified:.1%})"
                           for label, count in totals.labels.most_common())
        print(f"  labels: {shares}", flush=True)
        share = totals.abstained / totals.classified
        print(f"  not sure (under the confidence floor): {totals.abstained} ({share:.1%})", flush=True)
