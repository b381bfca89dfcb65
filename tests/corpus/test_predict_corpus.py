"""``distrinews predict --input``: a corpus classified as the user runs it, through the real command in real processes.

One session fixture runs the commands once (read-only afterwards): the original AG News CSV in one process (stderr on
a terminal: the progress bar shows) and in two through a real ``accelerate launch``; the same run SIGKILLed while
writing its third shard and run again; the same texts as a folder of CSV, JSON Lines and Parquet files, in this
process (``--quiet``: no bar). The tiny model ships its int8 graph, as a pushed model does, so these runs take the
Space's int8 lanes.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO_ROOT, ag_news_rows, free_port, shared_folder, write_csv_rows

ROWS = 150
SHARD = 32  # 5 shards: 4 full, 1 of 22 rows
KILLED_IN_SHARD = 2
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
CSV_MODULE_DEFAULT = 131_072  # csv.field_size_limit() of a fresh interpreter


def predict_command(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "distrinews", "predict", "--model", str(model), *args]


def run(command: list[str], env: dict | None = None, tty: bool = False, timeout: float = 300) -> dict:
    """Run ``command``; its exit code, stdout and stderr (stderr a pseudo-terminal with ``tty``)."""
    environment = {**os.environ, **(env or {})}
    if not tty:
        done = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                              timeout=timeout)
        return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    stdout = process.stdout.read().decode()
    code = process.wait(timeout=timeout)
    return {"code": code, "stdout": stdout, "stderr": b"".join(chunks).decode(errors="replace")}


def run_in_this_process(model: Path, *args: str, env: dict) -> dict:
    """``distrinews predict`` in this process with ``env`` set, its output captured (no capsys in a session fixture)."""
    import contextlib
    import io
    from unittest import mock

    from distrinews.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["predict", "--model", str(model), *args])
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_here(capsys, model: Path, *args: str) -> dict:
    """``distrinews predict`` in this process (no interpreter start): its exit code, stdout and stderr."""
    from distrinews.cli import main

    code = main(["predict", "--model", str(model), *args])
    captured = capsys.readouterr()
    return {"code": code, "stdout": captured.out, "stderr": captured.err}


def texts_of(rows) -> list[str]:
    return [f"{title} {description}" for _, title, description in rows]


def write_folder(folder: Path, rows) -> None:
    """The same texts as three files of three formats, in name order, each with its own ids."""
    texts = texts_of(rows)
    thirds = [slice(0, 50), slice(50, 100), slice(100, ROWS)]
    frames = [pd.DataFrame({"id": [f"doc-{i}" for i in range(part.start, part.stop)], "text": texts[part]})
              for part in thirds]
    folder.mkdir(parents=True)
    frames[0].to_csv(folder / "a.csv", index=False)
    frames[1].to_json(folder / "b.jsonl", orient="records", lines=True, force_ascii=False)
    frames[2].to_parquet(folder / "c.parquet")


@pytest.fixture(scope="session")
def corpus_runs(shipped_space_model, tmp_path_factory):
    def build(folder: Path) -> None:
        rows = ag_news_rows(ROWS, seed=5)
        data = write_csv_rows(folder / "ag_news.csv", rows)
        write_folder(folder / "mixed", rows)
        env = {"ONNX_CACHE_DIR": str(folder / "onnx-cache")}
        common = ["--input", str(data), "--shard_size", str(SHARD)]
        runs = {"one": run(predict_command(shipped_space_model, *common, "--output", str(folder / "one.parquet")),
                           env, tty=True)}
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO_ROOT / "accelerate_configs" / "cpu.yaml"), "--num_processes", "2", "--main_process_port",
                  str(free_port()), "-m", "distrinews", "predict", "--model", str(shipped_space_model), *common,
                  "--output", str(folder / "two.parquet")]
        runs["two"] = run(launch, env)
        resumed = predict_command(shipped_space_model, *common, "--output", str(folder / "resumed.csv"))
        runs["killed"] = run(resumed, {**env, "DISTRINEWS_FAULT_INJECT": f"crash_in_shard@{KILLED_IN_SHARD}"})
        runs["left_by_kill"] = sorted(path.name for path in (folder / "resumed.csv.shards").iterdir())
        runs["resumed"] = run(resumed, env)
        runs["mixed"] = run_in_this_process(shipped_space_model, "--input", str(folder / "mixed"), "--shard_size",
                                            str(SHARD), "--output", str(folder / "mixed.jsonl"), "--quiet", env=env)
        (folder / "runs.json").write_text(json.dumps(runs))

    folder = shared_folder(tmp_path_factory, "corpus-runs", build)
    return folder, json.loads((folder / "runs.json").read_text())


def succeeded(result: dict) -> None:
    assert result["code"] == 0, result["stdout"][-3000:] + result["stderr"][-5000:]


def test_a_file_is_classified_in_input_order_with_every_label_probability(corpus_runs):
    folder, runs = corpus_runs
    succeeded(runs["one"])
    table = pd.read_parquet(folder / "one.parquet")
    assert list(table["row"]) == list(range(ROWS))
    assert list(table.columns) == ["row", "label", "labels", "score", "confidence", "abstained", "windows",
                                   "truncated", *(f"prob_{label}" for label in LABELS)]
    probabilities = table[[f"prob_{label}" for label in LABELS]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-5
    assert (table["label"] == [LABELS[i] for i in probabilities.argmax(axis=1)]).all()
    assert (table["windows"] == 1).all() and not table["abstained"].any()
    summary = runs["one"]["stdout"]
    assert f"{ROWS} rows, {ROWS} classified" in summary and "0 bad row(s)" in summary
    assert "labels: " in summary and "not sure" in summary


def test_the_progress_bar_shows_on_a_terminal_and_not_under_quiet(corpus_runs):
    _, runs = corpus_runs
    assert "rows/s" in runs["one"]["stderr"] and "classifying" in runs["one"]["stderr"]
    succeeded(runs["mixed"])
    assert "rows/s" not in runs["mixed"]["stderr"] and "classifying:" not in runs["mixed"]["stderr"]
    assert f"{ROWS} classified" in runs["mixed"]["stdout"]  # the summary is printed all the same


def test_two_processes_under_accelerate_equal_one_row_for_row(corpus_runs):
    folder, runs = corpus_runs
    succeeded(runs["two"])
    assert "2 process(es)" in runs["two"]["stdout"]
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "two.parquet"), pd.read_parquet(folder / "one.parquet"))


def test_killed_while_writing_a_shard_and_run_again_it_equals_an_uninterrupted_run(corpus_runs):
    folder, runs = corpus_runs
    assert runs["killed"]["code"] == -9  # SIGKILL, as kill -9
    complete = [f"shard-{i:06d}.parquet" for i in range(KILLED_IN_SHARD)]
    assert [name for name in runs["left_by_kill"] if name.endswith(".parquet")] == complete
    assert f".shard-{KILLED_IN_SHARD:06d}.parquet.tmp" in runs["left_by_kill"]  # written, never renamed
    succeeded(runs["resumed"])
    assert f"resuming: {KILLED_IN_SHARD} shard(s) are complete already" in runs["resumed"]["stdout"]
    resumed = pd.read_csv(folder / "resumed.csv", keep_default_na=False)
    one = pd.read_parquet(folder / "one.parquet")
    assert list(resumed["label"]) == list(one["label"])
    for label in LABELS:  # the CSV holds each float's shortest exact representation
        assert list(resumed[f"prob_{label}"]) == list(one[f"prob_{label}"])
    assert [json.loads(cell) for cell in resumed["labels"]] == [list(cell) for cell in one["labels"]]
    manifest = json.loads((folder / "resumed.csv.shards" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["summary"]["classified"] == ROWS
    assert not list((folder / "resumed.csv.shards").glob("*shard-*"))  # merged into the output, then removed


def test_a_folder_of_csv_jsonl_and_parquet_reads_as_one_corpus(corpus_runs):
    folder, runs = corpus_runs
    lines = (folder / "mixed.jsonl").read_text(encoding="utf-8").splitlines()
    mixed = [json.loads(line) for line in lines]
    one = pd.read_parquet(folder / "one.parquet")
    assert [record["row"] for record in mixed] == list(range(ROWS))
    assert [record["id"] for record in mixed] == [f"doc-{i}" for i in range(ROWS)]
    # The same texts in the same order and shards: the same batches, so the same numbers to the last bit.
    assert [record["prob_World"] for record in mixed] == list(one["prob_World"])
    assert "3 files in" in runs["mixed"]["stdout"]


def test_bad_rows_are_reported_with_their_row_and_counted_or_stop_the_run(shipped_space_model, tmp_path, capsys,
                                                                           monkeypatch):
    lines = ['{"id": 1, "text": "stocks rally as oil slides"}', '{"id": 2, "text": 5}', '{"id": 3, "text": ""}',
             "not json at all", '{"id": 5}', "[1, 2]", '{"id": 7, "text": "\\u0000 \\t\\u000b"}', "",
             '{"id": 8, "text": "the team wins the cup final"}', '{"id": "\\ud800-9", "text": "chip prices \\ud83d"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("ONNX_CACHE_DIR", str(tmp_path / "onnx-cache"))
    output = tmp_path / "out.csv"
    result = run_here(capsys, shipped_space_model, "--input", str(tmp_path / "in.jsonl"), "--output", str(output),
                      "--quiet")
    succeeded(result)
    assert list(pd.read_csv(output)["id"]) == ["1", "8", "\\ud800-9"]  # a lone surrogate escaped
    bad = [json.loads(line) for line in (tmp_path / "out.csv.bad_rows.jsonl").read_text().splitlines()]
    assert [(b["row"], b["where"].rsplit(" ", 1)[1]) for b in bad] == [(1, "2"), (2, "3"), (3, "4"), (4, "5"),
                                                                      (5, "6"), (6, "7")]
    problems = [b["problem"] for b in bad]
    assert problems[0] == "text holds a int, not text" and problems[1].startswith("no text")
    assert problems[2].startswith("not JSON") and problems[3].startswith("no text")
    assert "not an object" in problems[4] and problems[5].startswith("no text")
    assert "9 rows, 3 classified" in result["stdout"] and "6 bad row(s)" in result["stdout"]

    stopped = run_here(capsys, shipped_space_model, "--input", str(tmp_path / "in.jsonl"), "--output",
                       str(tmp_path / "stopped.csv"), "--on_bad_row", "stop", "--quiet")
    assert stopped["code"] == 2
    assert "in.jsonl line 2 (row 1): text holds a int, not text" in stopped["stderr"]
    assert not (tmp_path / "stopped.csv").exists()


def test_an_output_from_another_model_input_or_settings_is_refused(shipped_space_model, corpus_runs, tmp_path, capsys,
                                                                   monkeypatch):
    folder, _ = corpus_runs
    other_model = tmp_path / "other-model"
    _copy_with_other_weights(shipped_space_model, other_model)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("one.parquet", "ag_news.csv"):
        (work / name).write_bytes((folder / name).read_bytes())
    _copy_tree(folder / "one.parquet.shards", work / "one.parquet.shards")
    monkeypatch.setenv("ONNX_CACHE_DIR", str(tmp_path / "onnx-cache"))
    common = ["--input", str(work / "ag_news.csv"), "--output", str(work / "one.parquet"), "--quiet"]

    again = run_here(capsys, shipped_space_model, *common, "--shard_size", str(SHARD))
    succeeded(again)
    assert "is complete already" in again["stdout"]
    settings = run_here(capsys, shipped_space_model, *common, "--shard_size", "16")
    assert settings["code"] == 2 and "made from another settings (settings: shard_size)" in settings["stderr"]
    model = run_here(capsys, other_model, *common, "--shard_size", str(SHARD))
    assert model["code"] == 2 and "made from another model (model: id, revision)" in model["stderr"]
    before = (work / "one.parquet").read_bytes()
    with (work / "ag_news.csv").open("a") as handle:
        handle.write('"1","one more","row"\n')
    changed = run_here(capsys, shipped_space_model, *common, "--shard_size", str(SHARD))
    assert changed["code"] == 2 and "made from another input (input: files)" in changed["stderr"]
    assert (work / "one.parquet").read_bytes() == before  # nothing was touched

    replaced = run_here(capsys, other_model, *common, "--shard_size", str(SHARD), "--overwrite")
    succeeded(replaced)
    assert len(pd.read_parquet(work / "one.parquet")) == ROWS + 1

    unrelated = tmp_path / "mine.csv"
    unrelated.write_text("someone's own file\n")
    refused = run_here(capsys, shipped_space_model, "--input", str(work / "ag_news.csv"), "--output", str(unrelated),
                       "--quiet")
    assert refused["code"] == 2 and "was not written by a run with a manifest" in refused["stderr"]
    assert unrelated.read_text() == "someone's own file\n"
    assert csv.field_size_limit() == CSV_MODULE_DEFAULT  # the Space's CSV upload in this process keeps its limit


def test_a_csv_record_the_csv_module_cannot_read_stops_the_run_at_its_line(shipped_space_model, tmp_path, capsys,
                                                                            monkeypatch):
    from distrinews.corpus.reading import CSV_FIELD_LIMIT

    monkeypatch.setenv("ONNX_CACHE_DIR", str(tmp_path / "onnx-cache"))
    long_field = "x" * (CSV_MODULE_DEFAULT + 10)  # over the csv module's default limit, within the corpus reader's
    (tmp_path / "in.csv").write_text(f"text\nfirst\n{long_field}\n{'y' * (CSV_FIELD_LIMIT + 1)}\nlast\n")
    result = run_here(capsys, shipped_space_model, "--input", str(tmp_path / "in.csv"), "--output",
                      str(tmp_path / "out.csv"), "--quiet", "--shard_size", "2")
    assert result["code"] == 2 and "in.csv: line 4: cannot be read as CSV (field larger than field limit" in \
        result["stderr"]
    assert sorted(path.name for path in (tmp_path / "out.csv.shards").glob("*.parquet")) == ["shard-000000.parquet"]
    assert csv.field_size_limit() == CSV_MODULE_DEFAULT


def _copy_tree(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target)


def _copy_with_other_weights(source: Path, target: Path) -> None:
    """The model with its classifier bias changed (and without the shipped graph, which matched the old weights)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("onnx"))
    weights = load_file(target / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + 0.5
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
