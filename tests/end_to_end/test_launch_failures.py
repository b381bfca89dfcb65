"""`distrinews launch` fails cleanly: what every rank would fail on is found in the launching process, before any
rank starts, and answered in seconds with one line and exit code 2; a rank's own documented exit code (3 for a
non-finite loss, 75 for a stop with its checkpoint) comes back unchanged, without the launcher's traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import free_port, tiny_train_args
from distrinews.training import faults
from distrinews.launch.configs import launch_config_path

DISTRINEWS = shutil.which("distrinews") or pytest.fail("the distrinews console script is not installed")
LAUNCHER_NOISE = ("Traceback", "ChildFailedError", "torch.distributed.elastic", "exitcode")


def _launch(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([DISTRINEWS, "launch", "--main_process_port", str(free_port()), *args], cwd=cwd,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - started


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def test_an_unreachable_hub_stops_the_launch_in_seconds(tiny_model, tmp_path):
    output_dir = tmp_path / "out"
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a firewall, or a wrong HF_ENDPOINT
    result, seconds = _launch(["--model_name_or_path", str(tiny_model), "--dataset", "someone/their-news",
                               "--output_dir", str(output_dir)], tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0",
                              HF_HOME=str(tmp_path / "hf-home"))
    assert result.returncode == 2
    line = _one_error_line(result)
    assert line.startswith(f"error: the Hub at {endpoint} cannot be reached (")
    assert line.endswith("and dataset 'someone/their-news' is not in the local cache: check the network (or "
                         "HF_ENDPOINT), or pass a local folder")
    assert "Training" not in result.stdout and not output_dir.exists()
    # Before: ~38 s of retries on every rank, then the launcher's traceback. Now the imports are most of it.
    assert seconds < 60, seconds


@pytest.mark.parametrize("case", ["max_length 1", "seed -5", "output_dir under a file", "no token to push",
                                  "a bad row", "an extra metric that does not fit"])
def test_bad_input_stops_before_any_rank_starts(case, tiny_model, ag_news_dir, metric_modules, tmp_path):
    data, output_dir = ag_news_dir, tmp_path / "out"
    two_labels_only = metric_modules["positive_share"]
    settings, expected = {
        "max_length 1": ({"max_length": 1}, "error: max_length=1: must be > 2: "),
        "an extra metric that does not fit": ({"extra_metrics": two_labels_only}, f"error: extra_metrics: "
                                              f"{two_labels_only} does not fit this task (one label per text, 4 "
                                              "labels): ValueError: "),
        "seed -5": ({"seed": -5}, "error: seed=-5: must be in [0, 4294967295]"),
        "output_dir under a file": ({}, f"error: output_dir {tmp_path / 'file' / 'out'} cannot be created: "),
        "no token to push": ({"push_to_hub": "true", "hub_model_id": "me/news"}, "error: no Hugging Face token found"),
        "a bad row": ({}, "error: "),
    }[case]
    if case == "output_dir under a file":
        (tmp_path / "file").write_text("not a folder")
        output_dir = tmp_path / "file" / "out"
    if case == "a bad row":
        data = shutil.copytree(ag_news_dir, tmp_path / "data")
        with (data / "test.csv").open("a", encoding="utf-8") as handle:
            handle.write('"5","A headline","with a class index AG News does not have"\n')
        expected = f"error: {data / 'test.csv'}: row 62: class_index '5' is not one of 1, 2, 3, 4"
    result, seconds = _launch(tiny_train_args(tiny_model, data, output_dir, **settings), tmp_path,
                              HF_TOKEN="", HF_HOME=str(tmp_path / "empty-hf-home"), HF_HUB_OFFLINE="0")
    assert result.returncode == 2
    assert _one_error_line(result).startswith(expected), result.stderr
    assert "Training" not in result.stdout and not (tmp_path / "out").exists()
    assert seconds < 60, seconds


def test_a_ranks_exit_code_comes_back_without_the_launchers_traceback(tiny_model, ag_news_dir, tmp_path):
    # A loss that turns NaN at step 2: every rank stops with exit code 3, as documented (core/errors.py).
    result, _ = _launch(tiny_train_args(tiny_model, ag_news_dir, tmp_path / "out", max_nonfinite_steps=2),
                        tmp_path, **{faults.ENV_VAR: "nan_loss@2"})
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.count("error: non-finite loss or gradients for 2 optimizer steps in a row") == 2  # per rank
    assert not [noise for noise in LAUNCHER_NOISE if noise in result.stderr], result.stderr[-3000:]


# The torchrun agent's deadline for ranks to exit once it has passed them a signal (SIGKILL after it). The ranks
# are frozen for longer than that after the signal, as a checkpoint write on a slow disk would hold them.
AGENT_DEADLINE_SECONDS, RANKS_FROZEN_SECONDS = 3, 5


@pytest.mark.parametrize("signum, frozen_seconds", [(signal.SIGTERM, RANKS_FROZEN_SECONDS), (signal.SIGINT, 0)],
                         ids=["SIGTERM, ranks slower than the agent's deadline", "SIGINT"])
def test_a_stop_signal_to_the_launch_stops_every_rank_with_a_checkpoint_and_exit_75(signum, frozen_seconds,
                                                                                    tiny_model, ag_news_dir,
                                                                                    tmp_path):
    # SIGTERM: what a job scheduler, a Kaggle session's end or `kill` sends; SIGINT: Ctrl-C.
    output_dir = tmp_path / "out"
    command = [DISTRINEWS, "launch", "--main_process_port", str(free_port()),
               *tiny_train_args(tiny_model, ag_news_dir, output_dir, num_train_epochs=50, logging_steps=1)]
    returncode, output = _stop_after_the_first_step(command, output_dir, tmp_path, signum, frozen_seconds,
                                                    TORCH_ELASTIC_SHUTDOWN_TIMEOUT=str(AGENT_DEADLINE_SECONDS))
    assert returncode == 75, output[-3000:]
    _assert_stopped_with_a_checkpoint(output_dir, signum, output)


def test_a_one_process_launch_stops_with_its_checkpoint_and_exit_75(tiny_model, ag_news_dir, tmp_path):
    # The launch on one GPU (single_gpu.yaml: accelerate's simple launcher, no torchrun agent), here on the CPU.
    output_dir = tmp_path / "out"
    launch_args = ["--config_file", str(launch_config_path("single_gpu")), "--mixed_precision", "no",
                   "-m", "distrinews.train",
                   *tiny_train_args(tiny_model, ag_news_dir, output_dir, num_train_epochs=50, logging_steps=1)]
    command = [sys.executable, "-c", "import sys; from distrinews.launch.launcher import run_accelerate_launch; "
               "sys.exit(run_accelerate_launch(sys.argv[1:]))", *launch_args]
    returncode, output = _stop_after_the_first_step(command, output_dir, tmp_path, signal.SIGTERM)
    assert returncode == 75, output[-3000:]
    _assert_stopped_with_a_checkpoint(output_dir, signal.SIGTERM, output)


def _stop_after_the_first_step(command: list[str], output_dir: Path, cwd: Path, signum: int,
                               frozen_seconds: float = 0, **env: str) -> tuple[int, str]:
    """Start ``command``, send ``signum`` to it once a training step is logged, freeze its ranks (its child
    processes) for ``frozen_seconds`` right after; its exit code and its stdout and stderr together."""
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _logged_a_step(output_dir):  # polled: training has begun
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.05)
        ranks = psutil.Process(process.pid).children()
        process.send_signal(signum)
        if frozen_seconds:
            _freeze(ranks, frozen_seconds)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, output


def _freeze(processes: list[psutil.Process], seconds: float) -> None:
    for each in processes:
        each.suspend()  # SIGSTOP
    time.sleep(seconds)
    for each in processes:
        each.resume()


def _assert_stopped_with_a_checkpoint(output_dir: Path, signum: int, output: str) -> None:
    stopped = json.loads((output_dir / "log.jsonl").read_text().splitlines()[-1])
    assert stopped["type"] == "stopped" and stopped["cause"] == signal.Signals(signum).name, output[-3000:]
    assert stopped["exit_code"] == 75
    assert (Path(stopped["checkpoint"]) / "COMPLETE").is_file()
    assert "Run the same command again to resume from it" in output
    assert "Traceback" not in output


def _logged_a_step(output_dir: Path) -> bool:
    log = output_dir / "log.jsonl"
    return log.is_file() and '"type": "train"' in log.read_text()
