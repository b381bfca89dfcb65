"""The shipped multi-node launch settings, run as two machines on 127.0.0.1 (one CPU process each, gloo), train
exactly like two processes on one machine: the final weights are equal, tensor for tensor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import REFERENCE_RUN, REPO_ROOT, free_port, tiny_train_args
from distrinews.launch.configs import launch_config_path

TIMEOUT = 300


def _start_machine(machine_rank: int, port: int, train_args: list[str], cache) -> subprocess.Popen:
    # The file's own settings, with only what differs here given on the command line: this machine's rank, the
    # address, one process per machine, and no fp16 (there is no GPU).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config_path("multi_node")),
               "--machine_rank", str(machine_rank), "--num_machines", "2", "--num_processes", "2",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "no",
               "-m", "distrinews.train", *train_args]
    # Each machine has its own datasets cache, as separate machines do; output_dir is the shared storage the
    # file's header asks for.
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache / f"machine-{machine_rank}")}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _run_two_machines(train_args: list[str], cache) -> None:
    port = free_port()
    machines = [_start_machine(rank, port, train_args, cache) for rank in (0, 1)]
    try:
        outputs = [machine.communicate(timeout=TIMEOUT)[0] for machine in machines]
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
                machine.wait()
    for rank, (machine, output) in enumerate(zip(machines, outputs)):
        assert machine.returncode == 0, f"machine {rank} failed ({machine.returncode}):\n{output[-6000:]}"


def _weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "model" / "model.safetensors"))


def test_two_machines_train_like_two_processes_on_one(reference_run, tiny_model, ag_news_dir, tmp_path):
    """The two machines run the shared reference run's settings (conftest.py): 2 processes on one machine."""
    two_machines = tmp_path / "two_machines"
    _run_two_machines(tiny_train_args(tiny_model, ag_news_dir, two_machines, **REFERENCE_RUN), tmp_path / "caches")

    described = json.loads((two_machines / "metrics.json").read_text())["train"]
    assert (described["num_machines"], described["num_processes"]) == (2, 2)
    assert json.loads((reference_run / "metrics.json").read_text())["train"]["num_machines"] == 1
    multi, single = _weights(two_machines), _weights(reference_run)
    assert multi.keys() == single.keys()
    unequal = {name: (multi[name] - single[name]).abs().max().item()
               for name in multi if not torch.equal(multi[name], single[name])}
    assert not unequal, f"max abs difference per tensor: {unequal}"
    # The weights moved from the initial model, so equality says something.
    initial = load_file(str(tiny_model / "model.safetensors"))
    assert any(not torch.equal(initial[name], multi[name]) for name in initial if name in multi)
