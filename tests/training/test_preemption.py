"""The stop-signal handler in a real process receiving real signals, and DataLoader workers that survive them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO_ROOT
from distrinews.training.preemption import EXIT_STOPPED, REPEAT_WINDOW_SECONDS, ignore_stop_signals


def _run_script(body: str) -> subprocess.CompletedProcess:
    script = "import os, signal, sys, time\nfrom distrinews.training.preemption import StopRequest\n" + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_only_raises_the_flag(signum):
    result = _run_script(f"""
        stop = StopRequest()
        stop.install()
        assert not stop.requested
        os.kill(os.getpid(), {int(signum)})
        time.sleep(0.1)  # the Python-level handler runs at the next bytecode boundary
        assert stop.requested and stop.signal_name == "{signum.name}", stop.signal_name
        print("still running")
    """)
    assert result.returncode == 0, result.stderr
    assert "still running" in result.stdout
    assert f"received {signum.name}: finishing this step, writing a checkpoint" in result.stderr
    assert f"exiting with code {EXIT_STOPPED}" in result.stderr


def test_repeat_within_window_counts_once_and_a_later_one_exits_at_once():
    # The torchrun agent forwards the signal it received to every rank that also got it directly:
    # that echo must not count as the user's second signal. A genuine second one kills at once.
    result = _run_script(f"""
        stop = StopRequest()
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        print("survived the echo", flush=True)
        time.sleep({REPEAT_WINDOW_SECONDS} + 0.2)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("not reached")
    """)
    assert "survived the echo" in result.stdout
    assert "not reached" not in result.stdout
    assert result.returncode == -signal.SIGTERM  # died of the signal itself, 128 + 15 in a shell
    assert "received SIGTERM again: exiting now without a checkpoint" in result.stderr


def test_uninstall_restores_previous_handlers():
    result = _run_script("""
        # Whatever this process started with (a shell ignores SIGINT for background jobs) is what comes back.
        before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        stop = StopRequest()
        stop.install()
        assert signal.getsignal(signal.SIGTERM) not in before.values()
        stop.uninstall()
        assert {signum: signal.getsignal(signum) for signum in before} == before
        stop.install()
        stop.exit_agreed()   # after the stop checkpoint: ignore, and do not restore on uninstall
        stop.uninstall()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        print("ignored")
    """)
    assert result.returncode == 0, result.stderr
    assert "ignored" in result.stdout


class _SlowNumbers(torch.utils.data.Dataset):
    """0..39, slowly enough that the worker is still busy when the signal arrives."""

    def __len__(self):
        return 40

    def __getitem__(self, index):
        time.sleep(0.01)
        return index


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_data_loader_workers_leave_stop_signals_to_the_trainer(signum):
    """A Ctrl-C or job-wide SIGTERM also reaches the workers; they must keep feeding the last steps."""
    batches = iter(DataLoader(_SlowNumbers(), batch_size=4, num_workers=1, worker_init_fn=ignore_stop_signals))
    seen = next(batches).tolist()
    os.kill(batches._workers[0].pid, signum)  # noqa: SLF001 - the real worker process
    for batch in batches:
        seen.extend(batch.tolist())
    assert seen == list(range(40))


def test_without_the_worker_init_the_signal_kills_the_loader():
    """The control for the test above: the default worker dies of SIGTERM and takes the epoch with it."""
    batches = iter(DataLoader(_SlowNumbers(), batch_size=4, num_workers=1))
    next(batches)
    os.kill(batches._workers[0].pid, signal.SIGTERM)  # noqa: SLF001
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        for _ in batches:
            pass


def test_released_workers_let_the_process_exit():
    # Workers that ignore SIGTERM and are still alive at interpreter exit hang it: multiprocessing's exit handler
    # stops them with SIGTERM, then joins them. train() releases its loaders' workers before returning; here a
    # loader held to the end (as a reference cycle holds one) must not keep the process from exiting.
    script = textwrap.dedent("""
        from torch.utils.data import DataLoader
        from distrinews.training.loaders import release_loader_workers
        from distrinews.training.preemption import ignore_stop_signals

        loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True,
                            worker_init_fn=ignore_stop_signals)
        held = [loader]
        held.append(held)
        assert sum(len(batch) for batch in loader) == 8
        workers = loader._iterator._workers
        release_loader_workers([loader])
        print(sum(worker.is_alive() for worker in workers))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "0", result.stderr
