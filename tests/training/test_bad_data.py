"""Bad input data fails before training with a message naming file, row and problem; output_dir stays empty."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from conftest import tiny_train_args, write_csv_rows
from distrinews.cli import main as cli_main


def _break(folder, case):
    train = folder / "train.csv"
    if case == "missing_file":
        train.unlink()
        return "missing train split"
    rows = list(csv.reader(train.open(newline="", encoding="utf-8")))
    if case == "label_out_of_range":
        rows[6][0] = "5"
        write_csv_rows(train, rows)
        return "train.csv: row 7: class_index '5' is not one of 1, 2, 3, 4"
    if case == "empty_text":
        rows[3][1] = rows[3][2] = "  "
        write_csv_rows(train, rows)
        return "train.csv: row 4: empty text"
    if case == "missing_column":
        rows[9] = rows[9][:2]
        write_csv_rows(train, rows)
        return "train.csv: row 10: expected 3 fields"
    if case == "undecodable":
        data = train.read_bytes().split(b"\n")
        data[11] = data[11][:20] + b"\xff\xfe" + data[11][20:]
        train.write_bytes(b"\n".join(data))
        return "train.csv: row 12: bytes that are not UTF-8"
    if case == "jsonl_missing_label_column":
        train.unlink()
        (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": f"story {i}"}) for i in range(20)))
        return "train.jsonl: missing column(s) label"
    if case == "jsonl_bad_label":
        train.unlink()
        lines = [json.dumps({"text": f"story number {i}", "label": i % 4}) for i in range(20)]
        lines[4] = json.dumps({"text": "story", "label": 7})
        (folder / "train.jsonl").write_text("\n".join(lines))
        return "train.jsonl: row 5: label 7 skips label(s) 4, 5, 6, which no training row has"
    raise AssertionError(case)


CASES = ["missing_file", "label_out_of_range", "empty_text", "missing_column", "undecodable",
         "jsonl_missing_label_column", "jsonl_bad_label"]


@pytest.mark.parametrize("case", CASES)
def test_bad_data_is_reported_and_nothing_written(case, tiny_model, ag_news_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(ag_news_dir, data)
    expected = _break(data, case)
    output_dir = tmp_path / "out"
    code = cli_main(["train", *tiny_train_args(tiny_model, data, output_dir)])
    message = capsys.readouterr().err
    assert code == 2
    assert expected in message, message
    assert not output_dir.exists()


def test_text_label_csv_with_header_trains(tiny_model, ag_news_dir, tmp_path):
    """The second local layout: csv files with text/label columns (labels 0..3)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.csv", "test.csv"):
        rows = list(csv.reader((ag_news_dir / name).open(newline="", encoding="utf-8")))
        write_csv_rows(data / name, [["label", "text"]] + [[int(r[0]) - 1, f"{r[1]} {r[2]}"] for r in rows])
    output_dir = tmp_path / "out"
    assert cli_main(["train", *tiny_train_args(tiny_model, data, output_dir, max_steps=3)]) == 0
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["test"]["num_examples"] == 61
