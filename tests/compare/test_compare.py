"""``distrinews compare`` on real run folders: six tiny in-process runs (two learning rates x seeds 1, 2, 3), read
back through the command as a user calls it, its numbers checked against the runs' own metrics.json files with the
standard library's statistics (not the command's numpy)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, shared_folder, tiny_train_args
from distrinews.cli import main as cli_main
from distrinews.compare.stats import t_two_sided_p

SEEDS = (1, 2, 3)
LEARNING_RATES = ("5e-3", "2e-3")


@pytest.fixture(scope="module")
def runs(tiny_model, ag_news_dir, tmp_path_factory) -> Path:
    """ROOT/lr-{lr}-seed-{seed}/: finished runs, built once per session (read-only)."""
    # Imported here, not at the top: torch sizes its thread pool when imported, which must come after the
    # session's OMP_NUM_THREADS=1 (conftest), or each tiny run competes with itself for the cores.
    from distrinews.training.loop import main as train_main

    def build(root: Path) -> None:
        for lr in LEARNING_RATES:
            for seed in SEEDS:
                flags = dict(seed=seed, learning_rate=lr, max_steps=12, logging_steps=6, validation_fraction=0.2)
                assert train_main(tiny_train_args(tiny_model, ag_news_dir, root / f"lr-{lr}-seed-{seed}",
                                                  **flags)) == 0

    return shared_folder(tmp_path_factory, "compare-runs", build)


def _folders(runs: Path, lr: str) -> list[Path]:
    return [runs / f"lr-{lr}-seed-{seed}" for seed in SEEDS]


def _metric(folder: Path, split: str, metric: str) -> float:
    return json.loads((folder / "metrics.json").read_text())[split][metric]


def _compare(capsys, *arguments) -> tuple[int, str, str]:
    code = cli_main(["compare", *map(str, arguments)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_runs_differing_only_in_seed_form_one_row_with_the_right_mean_and_std(runs, tmp_path, capsys):
    table = tmp_path / "table.csv"
    code, out, _ = _compare(capsys, *_folders(runs, "5e-3"), *_folders(runs, "2e-3"), "--output", table)
    assert code == 0
    rows = _csv_rows(table)
    assert [row["learning_rate"] for row in rows] == ["0.005", "0.002"]  # output_dir and run_name differ too
    for row, lr in zip(rows, LEARNING_RATES):
        assert (row["n_seeds"], row["seeds"]) == ("3", "1 2 3")
        for split in ("validation", "test"):
            for metric in ("accuracy", "macro_f1"):
                values = [_metric(folder, split, metric) for folder in _folders(runs, lr)]
                prefix = f"{split}_{metric}_"
                assert float(row[prefix + "mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
                assert float(row[prefix + "std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
                assert (float(row[prefix + "min"]), float(row[prefix + "max"])) == (min(values), max(values))
        seconds = [json.loads((f / "metrics.json").read_text())["train"]["train_seconds"] for f in _folders(runs, lr)]
        assert float(row["train_seconds_mean"]) == pytest.approx(statistics.mean(seconds))
    test_accuracy = [_metric(folder, "test", "accuracy") for folder in _folders(runs, "5e-3")]
    cell = f"{statistics.mean(test_accuracy):.4f} ± {statistics.stdev(test_accuracy):.4f}"
    first_row = out.splitlines()[2]
    assert first_row.startswith("| 1 | 0.005 | 3 (1, 2, 3) | ") and cell in first_row


def test_the_paired_comparison_is_a_paired_t_test_on_the_shared_seeds(runs, tmp_path, capsys):
    code, out, _ = _compare(capsys, *_folders(runs, "5e-3"), *_folders(runs, "2e-3"), "--output", tmp_path / "t.md")
    assert code == 0
    differences = [_metric(b, "test", "accuracy") - _metric(a, "test", "accuracy")
                   for a, b in zip(_folders(runs, "5e-3"), _folders(runs, "2e-3"))]
    (line,) = [line for line in out.splitlines() if line.startswith("- group 2 − group 1")]
    assert "on seeds 1, 2, 3" in line and f"mean difference {statistics.mean(differences):+.4f}" in line
    spread = statistics.stdev(differences)
    assert f"std of the differences {spread:.4f}" in line
    if spread > 0:
        t = statistics.mean(differences) / (spread / math.sqrt(3))
        p = 1 - abs(t) / math.sqrt(t * t + 2)  # Student's t with 2 degrees of freedom, in closed form
        assert f"paired t = {t:.2f} (2 df), p = {p:.3g}" in line
        assert ("exceeds the seed spread" if p < 0.05 else "does not exceed the seed spread") in line
    assert line in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize("t, df", [(12.706, 1), (4.303, 2), (3.182, 3), (2.776, 4), (2.228, 10), (2.086, 20)])
def test_the_p_value_matches_the_t_tables_critical_values(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=1e-4)  # two-sided 5% critical values of Student's t
    assert t_two_sided_p(-t, df) == t_two_sided_p(t, df)
    assert t_two_sided_p(0.0, df) == 1.0


def test_sweep_folders_and_quoted_globs_name_the_same_runs(runs, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for number, folder in enumerate(_folders(runs, "5e-3") + _folders(runs, "2e-3")):
        (sweep / f"trial-{number:04d}").mkdir(parents=True)
        for name in ("train_config.json", "metrics.json"):
            shutil.copy(folder / name, sweep / f"trial-{number:04d}" / name)
    (sweep / "trial-0006").mkdir()  # a pruned or running trial: no metrics.json
    shutil.copy(runs / "lr-5e-3-seed-1" / "train_config.json", sweep / "trial-0006")
    (sweep / "study.db").write_bytes(b"")

    code, from_sweep, err = _compare(capsys, sweep, "--output", tmp_path / "sweep.csv")
    assert code == 0 and "left out 1 unfinished run" in err and "trial-0006" in err
    code, from_glob, _ = _compare(capsys, runs / "lr-5e-3-seed-*", str(runs / "lr-2e-3-seed-?"), "--output",
                                  tmp_path / "glob.csv")
    assert code == 0 and from_glob == from_sweep
    assert [row["runs"].count("trial-") for row in _csv_rows(tmp_path / "sweep.csv")] == [3, 3]


def test_the_plot_is_written(runs, tmp_path, capsys):
    code, _, _ = _compare(capsys, runs, "--plot", tmp_path / "seeds.png")
    assert code == 0
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, tiny_model):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs / "lr-5e-3-seed-1" / "train_config.json", unfinished)
    cases = {"is neither a run folder nor a folder of runs": [str(tiny_model)],
             "matches no file or folder": [str(tmp_path / "no-such-run-*")],
             "does not exist": [str(tmp_path / "missing")],
             "not a finished run": [str(unfinished)],
             "must end in .md or .csv": [str(runs), "--output", str(tmp_path / "table.txt")]}
    for expected, arguments in cases.items():
        result = subprocess.run([sys.executable, "-m", "distrinews", "compare", *arguments], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (arguments, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
        assert result.stdout == ""
