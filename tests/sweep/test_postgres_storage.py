"""The PostgreSQL server the multi-worker sweep tests use (tests/postgres_server.py) holds an Optuna study that
real processes share: two worker processes ask the same study for trials at once, through a plain
``postgresql://`` URL and the driver the `sweep` extra declares, and no trial is handed out twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import optuna
import pytest

from postgres_server import PostgresServer

TRIALS_PER_WORKER = 8

# A worker: waits for the go file (both start asking together), asks for trials, reports each as it is told.
WORKER = """
import json, os, sys, time
import optuna
url, study_name, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
study = optuna.load_study(study_name=study_name, storage=url)
while not os.path.exists(go):
    time.sleep(0.01)
for _ in range(count):
    trial = study.ask()
    x = trial.suggest_float("x", -1.0, 1.0)
    study.tell(trial, x * x)
    print(json.dumps({"number": trial.number, "x": x}), flush=True)
"""


def _start_worker(url: str, study_name: str, go) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, url, study_name, str(TRIALS_PER_WORKER), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_share_one_study_and_no_trial_is_handed_out_twice(postgres_url, tmp_path):
    optuna.create_study(study_name="shared", storage=postgres_url, direction="minimize")
    workers = [_start_worker(postgres_url, "shared", tmp_path / "go") for _ in range(2)]
    time.sleep(0.5)
    (tmp_path / "go").touch()
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    told = [[json.loads(line) for line in stdout.splitlines()] for stdout, _ in outputs]

    assert [len(trials) for trials in told] == [TRIALS_PER_WORKER] * 2
    numbers = sorted(trial["number"] for trials in told for trial in trials)
    assert numbers == list(range(2 * TRIALS_PER_WORKER)), "a trial was handed out twice or lost"
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(trial.number for trial in complete) == numbers
    assert {trial.number: trial.value for trial in complete} == \
        {trial["number"]: trial["x"] ** 2 for trials in told for trial in trials}


def test_the_server_listens_on_loopback_only_and_stops_with_its_block(tmp_path):
    import sqlalchemy

    with PostgresServer(tmp_path) as server:
        engine = sqlalchemy.create_engine(server.url)
        with engine.connect() as connection:
            listen = connection.execute(sqlalchemy.text("SHOW listen_addresses")).scalar()
        engine.dispose()
        folder = server.folder
        assert server.url.startswith("postgresql://distrinews@127.0.0.1:")
    assert listen == "127.0.0.1"
    assert not folder.exists()
    engine = sqlalchemy.create_engine(server.url, connect_args={"connect_timeout": 2})
    with pytest.raises(sqlalchemy.exc.OperationalError):
        engine.connect()
