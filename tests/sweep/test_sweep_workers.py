"""Two ``distrinews sweep`` workers, started together, share one study on a real PostgreSQL server (on loopback,
tests/postgres_server.py) through a plain ``postgresql://`` URL: the study's trials are handed out once between them,
each runs in the folder of the worker that took it, and both stop when the study has its ``--n_trials``."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO_ROOT
from postgres_server import PostgresServer

optuna = pytest.importorskip("optuna")

N_TRIALS = 4


def test_two_workers_share_the_study_and_no_trial_runs_twice(tiny_model, ag_news_dir, tmp_path):
    from test_sweep import sweep_command

    (tmp_path / "space.yaml").write_text("learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    with PostgresServer(tmp_path) as server:
        workers = []
        for name in ("a", "b"):  # one folder each, as on two machines
            # No pruning: which trial the median rule stops depends on the learning rates TPE draws and on which
            # worker's trial finishes first, and this test counts complete trials.
            command = sweep_command(tmp_path / "space.yaml", tmp_path / name, N_TRIALS, "--storage", server.url,
                                    "--study_name", "shared", "--pruner", "none", model=tiny_model,
                                    data=ag_news_dir, max_steps=12)
            workers.append(subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True))
        outputs = [worker.communicate(timeout=300) for worker in workers]
        trials = optuna.load_study(study_name="shared", storage=server.url).trials
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stdout[-2000:] + stderr[-3000:]

    ran = {name: sorted(path.name for path in (tmp_path / name).glob("trial-*")) for name in ("a", "b")}
    assert all(ran.values()), f"one worker ran every trial: {ran}"  # both took part
    assert sorted(ran["a"] + ran["b"]) == [f"trial-{n:04d}" for n in range(N_TRIALS)]  # each trial in one place
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    assert sorted(trial.user_attrs["folder"] for trial in complete) == sorted(ran["a"] + ran["b"])
    # A trial asked for when the study was already full (both workers asking for the last one at once) is marked
    # surplus and never runs: it has no folder anywhere.
    assert all(trial.user_attrs.get("surplus") for trial in trials if trial not in complete)
    for name, folders in ran.items():
        for folder in folders:  # trained once, from the start: no resume
            log = [json.loads(line) for line in (tmp_path / name / folder / "log.jsonl").read_text().splitlines()]
            assert not [record for record in log if record["type"] == "resume"]
        table = (tmp_path / name / "trials.md").read_text()  # each worker's table holds every trial of the study
        assert all(f"| {n} |" in table for n in range(N_TRIALS)), table
