"""Shards and their manifest: how a corpus run survives being killed and spreads over processes and machines.

The input is cut into shards of ``shard_size`` rows in input order; shard k holds rows k*size to (k+1)*size - 1,
whatever the number of processes. Each shard is written to ``OUTPUT.shards/`` as ``shard-NNNNNN.json`` (its bad rows
and counts) and then ``shard-NNNNNN.parquet`` (its predictions), each atomically (a staging file, then a rename): a
shard whose Parquet file exists is complete, and a killed run leaves at most staging files, which the next run
overwrites. ``manifest.json`` records what the shards were made from (the model and its resolved revision, the
input's fingerprint, the settings that change an answer); a rerun with anything else is refused unless
``--overwrite``. At the end the main process merges the shards, in order, into OUTPUT (Parquet, CSV or JSON Lines,
by its suffix, Parquet without one; atomically too), writes the bad rows to ``OUTPUT.bad_rows.jsonl`` and marks the
manifest complete.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.atomic import write_json
from ..core.errors import OutputDirError
from ..core.predict import Prediction

FORMATS = (".parquet", ".csv", ".jsonl")
MANIFEST = "manifest.json"
PROBABILITY_PREFIX = "prob_"


def output_format(output: Path) -> str:
    """The output's format, by its suffix: .parquet, .csv or .jsonl; a name without a suffix is Parquet."""
    suffix = output.suffix.lower() or ".parquet"
    if suffix not in FORMATS:
        raise OutputDirError(f"--output {output}: the suffix says the format, one of {', '.join(FORMATS)} "
                             "(none: Parquet)")
    return suffix


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def output_columns(labels: Sequence[str], id_column: str | None) -> list[tuple[str, str]]:
    """(name, kind) of each output column, in order."""
    return [("row", "int64"), *([(id_column, "string")] if id_column else []), ("label", "string"),
            ("labels", "list"), ("score", "float64"), ("confidence", "float64"), ("abstained", "bool"),
            ("windows", "int64"), ("truncated", "bool"),
            *((f"{PROBABILITY_PREFIX}{label}", "float64") for label in labels)]


def _schema(columns: list[tuple[str, str]]):
    import pyarrow as pa

    kinds = {"int64": pa.int64(), "string": pa.string(), "list": pa.list_(pa.string()), "float64": pa.float64(),
             "bool": pa.bool_()}
    return pa.schema([(name, kinds[kind]) for name, kind in columns])


def prediction_record(row: int, row_id: str | None, id_column: str | None, prediction: Prediction) -> dict:
    record: dict[str, Any] = {"row": row}
    if id_column:
        record[id_column] = row_id
    record.update(label=prediction.label if prediction.labels else None, labels=prediction.labels,
                  score=prediction.score, confidence=prediction.confidence, abstained=prediction.abstained,
                  windows=prediction.windows, truncated=prediction.truncated)
    record.update({f"{PROBABILITY_PREFIX}{label}": p for label, p in prediction.probabilities.items()})
    return record


@dataclass
class ShardStats:
    rows: int = 0  # input rows in the shard, bad ones included
    classified: int = 0
    abstained: int = 0
    labels: Counter = field(default_factory=Counter)  # label given -> texts (multi-label: each label given)
    bad_rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"rows": self.rows, "classified": self.classified, "abstained": self.abstained,
                "labels": dict(self.labels), "bad_rows": self.bad_rows, "seconds": round(self.seconds, 3)}

    def add(self, other: dict) -> None:
        self.rows += other["rows"]
        self.classified += other["classified"]
        self.abstained += other["abstained"]
        self.labels.update(other["labels"])
        self.bad_rows.extend(other["bad_rows"])
        self.seconds += other["seconds"]


class ShardFolder:
    """``OUTPUT.shards/``: the manifest, the finished shards, and the merge into OUTPUT."""

    def __init__(self, output: Path) -> None:
        self.format = output_format(output)
        self.output = output
        self.folder = output.with_name(output.name + ".shards")
        self.bad_rows_file = output.with_name(output.name + ".bad_rows.jsonl")

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            raise OutputDirError(f"{self.manifest_path} is not a manifest this program wrote: remove it, or give "
                                 "--overwrite") from None

    def prepare(self, identity: dict, overwrite: bool) -> bool:
        """Make the folder ready for a run of ``identity``; True when the output is already complete. Called by the
        main process alone, before any shard is written."""
        manifest = self.manifest()
        if overwrite or (manifest and manifest.get("complete") and not self.output.is_file()):
            self._clear()
            manifest = None
        elif manifest is None and self.output.exists():
            raise OutputDirError(f"{self.output} exists and was not written by a run with a manifest in "
                                 f"{self.folder}: give --overwrite to replace it, or another --output")
        elif manifest is not None:
            differs = [key for key in ("model", "input", "settings") if manifest.get(key) != identity[key]]
            if differs:
                raise OutputDirError(f"{self.output} was made from another {' and '.join(differs)} "
                                     f"({self._difference(manifest, identity, differs)}): give --overwrite to replace "
                                     "it, or another --output")
            return bool(manifest.get("complete"))
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, {**identity, "complete": False})
        return False

    @staticmethod
    def _difference(manifest: dict, identity: dict, keys: list[str]) -> str:
        parts = []
        for key in keys:
            old, new = manifest.get(key) or {}, identity[key]
            names = sorted(name for name in {*old, *new} if old.get(name) != new.get(name))
            parts.append(f"{key}: {', '.join(names)}")
        return "; ".join(parts)

    def _clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        for path in (self.output, self.bad_rows_file):
            path.unlink(missing_ok=True)

    def is_done(self, index: int) -> bool:
        return (self.folder / f"{shard_name(index)}.parquet").is_file()

    def write(self, index: int, records: list[dict], stats: ShardStats, columns: list[tuple[str, str]]) -> None:
        """Shard ``index``: its counts and bad rows, then its predictions; the Parquet file's rename is the commit."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..training.faults import crash_if_asked

        self.folder.mkdir(parents=True, exist_ok=True)  # a machine without the main process has none yet
        write_json(self.folder / f"{shard_name(index)}.json", stats.to_dict())
        table = pa.Table.from_pylist(records, schema=_schema(columns))
        final = self.folder / f"{shard_name(index)}.parquet"
        staging = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, staging)
        crash_if_asked("crash_in_shard", index)  # tests: killed between the staging file and its rename
        staging.replace(final)

    def done_count(self) -> int:
        return sum(1 for _ in self.folder.glob("shard-*.parquet"))

    def missing(self, count: int) -> list[int]:
        return [index for index in range(count) if not self.is_done(index)]

    def merge(self, count: int, columns: list[tuple[str, str]], summary: dict) -> ShardStats:
        """Shards 0..count-1 into OUTPUT, in order; their stats summed. Every shard must be here."""
        import pyarrow.parquet as pq

        totals = ShardStats()
        for index in range(count):
            totals.add(json.loads((self.folder / f"{shard_name(index)}.json").read_text(encoding="utf-8")))
        tables = (pq.read_table(self.folder / f"{shard_name(index)}.parquet") for index in range(count))
        staging = self.output.with_name(f".{self.output.name}.tmp")
        _WRITERS[self.format](staging, tables, columns)
        staging.replace(self.output)
        self._write_bad_rows(totals.bad_rows)
        manifest = self.manifest() or {}
        write_json(self.manifest_path, {**manifest, "complete": True, "shards": count,
                                        "summary": {**summary, **totals.to_dict(), "bad_rows": len(totals.bad_rows)}})
        for index in range(count):  # the output holds them now; the manifest says the run is complete
            for suffix in (".parquet", ".json"):
                (self.folder / f"{shard_name(index)}{suffix}").unlink(missing_ok=True)
        return totals

    def _write_bad_rows(self, bad_rows: list[dict]) -> None:
        if not bad_rows:
            self.bad_rows_file.unlink(missing_ok=True)
            return
        staging = self.bad_rows_file.with_name(f".{self.bad_rows_file.name}.tmp")
        with staging.open("w", encoding="utf-8") as handle:
            for bad in bad_rows:
                handle.write(json.dumps(bad, ensure_ascii=False) + "\n")
        staging.replace(self.bad_rows_file)


def _write_parquet(path: Path, tables: Iterable, columns: list[tuple[str, str]]) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, _schema(columns)) as writer:
        for table in tables:
            writer.write_table(table)


def _write_csv(path: Path, tables: Iterable, columns: list[tuple[str, str]]) -> None:
    names = [name for name, _ in columns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for table in tables:
            for record in table.to_pylist():
                writer.writerow([json.dumps(record[name], ensure_ascii=False) if kind == "list" else
                                 ("" if record[name] is None else record[name]) for name, kind in columns])


def _write_jsonl(path: Path, tables: Iterable, columns: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for table in tables:
            for record in table.to_pylist():
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


_WRITERS = {".parquet": _write_parquet, ".csv": _write_csv, ".jsonl": _write_jsonl}
