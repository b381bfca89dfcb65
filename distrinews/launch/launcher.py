"""``distrinews launch``: check the run once, then ``accelerate launch`` it in this process, on the hardware found.

    distrinews launch --output_dir runs/ag_news [TRAIN OPTIONS]      # every GPU found; 2 CPU processes without one
    distrinews launch --dry_run --output_dir runs/ag_news            # print the equivalent command and exit

accelerate's own launcher runs in this interpreter (``accelerate.commands.launch``), so a virtual environment
that is not activated works, and the ranks' documented exit codes (``distrinews/core/errors.py``) come back
unchanged: 2 for bad input, 3, 4, 75 for a stop that wrote its checkpoint. A SIGTERM or SIGINT to this
process goes on to the ranks, and it exits once every rank has, with their code. Before any rank starts,
``preflight`` checks what each of them would otherwise fail on, and on a CPU the run's cost is estimated.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import sys
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Sequence

import psutil  # accelerate's own dependency

from ..core.machine import list_gpus
from ..training.config import parse_train_config
from .plan import plan_launch

# The signals torch's elastic agent would handle, were it in the main thread; this process passes them on instead.
_PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# How often the launching thread passes a received signal on, also to ranks started since.
_SIGNAL_PASS_SECONDS = 0.1
# What torch's elastic agent logs about a rank that exited with its documented code (the rank already said why)
# and about the signals it leaves to this process, and the loggers that say it.
_AGENT_NOISE = ("failed (exitcode", "Sending process", "Failed to register signal handlers")
_AGENT_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api")


def launch(train_argv: Sequence[str], *, dry_run: bool = False, main_process_port: int | None = None,
           mixed_precision: str = "auto") -> int:
    config = parse_train_config(train_argv)
    plan = plan_launch(list_gpus(), mixed_precision)
    port = [] if main_process_port is None else ["--main_process_port", str(main_process_port)]
    launch_args = [*plan.launch_args(), *port, "-m", "distrinews.train", *train_argv]
    print(f"{plan.reason}\n{shlex.join([sys.executable, '-m', 'accelerate.commands.launch', *launch_args])}",
          flush=True)
    if dry_run:
        return 0
    from .preflight import preflight

    report = preflight(config)
    if plan.on_cpu:
        from .estimate import describe_cpu_cost

        print(describe_cpu_cost(config, plan.processes, plan.precision, report.model, report.tokens_per_example,
                                report.train_examples, report.eval_sizes), flush=True)
    del report  # the ranks load their own model; this one's memory goes before they start
    return run_accelerate_launch(launch_args)


def run_accelerate_launch(launch_args: list[str]) -> int:
    """``accelerate launch LAUNCH_ARGS`` in this process; the exit code of the rank that failed first, without the
    launcher's traceback (the rank printed its own error).

    accelerate's launcher runs in a thread and this (main) thread handles the signals: torch's elastic agent and
    accelerate's one-process launcher take them over only in the main thread, where they answer a SIGTERM with
    a deadline of their own, SIGKILL after it, and exit code 128+N whatever the ranks did (143 after a stop
    that wrote its checkpoint). Here the signal goes on to the ranks, and the ranks' exit codes, once every
    rank has exited, are the answer: 75 after a stop with its checkpoint, however long the checkpoint took."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(launch_args)
    quiet = _QuietAgent()
    for name in _AGENT_LOGGERS:  # a logger's filters see only its own records, not its children's
        logging.getLogger(name).addFilter(quiet)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="accelerate-launch") as pool, \
                _SignalsToRanks() as signals:
            running = pool.submit(launch_command, args)
            while not futures.wait([running], timeout=_SIGNAL_PASS_SECONDS).done:
                signals.pass_on()
            running.result()
    except ChildFailedError as err:  # several processes (torchrun)
        rank, failure = err.get_first_failure()
        return _rank_exit_code(rank, failure.exitcode)
    except subprocess.CalledProcessError as err:  # one process: accelerate's simple launcher
        return _rank_exit_code(0, err.returncode)
    finally:
        for name in _AGENT_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
    return 0


def _rank_exit_code(rank: int, exitcode: int) -> int:
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        print(f"error: rank {rank} was killed by {name} (out of memory, or killed from outside)", file=sys.stderr)
        return 128 - exitcode
    from ..core.errors import EXIT_CODES

    if exitcode not in EXIT_CODES.values():
        print(f"error: rank {rank} failed with exit code {exitcode}; its traceback is above", file=sys.stderr)
    return exitcode


class _QuietAgent(logging.Filter):
    """Drops the elastic agent's report of a rank that exited with a code of its own (the rank said why), and its
    warning that it leaves the signals to this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_AGENT_NOISE)


class _SignalsToRanks:
    """While entered, the stop signals this process receives go on to its child processes (the ranks), to those
    that start later too: a rank stops with its checkpoint on SIGTERM/SIGINT (preemption.py) and dies of
    SIGHUP/SIGQUIT, and either way it exits by itself, with its own code, for the launcher to report."""

    def __init__(self) -> None:
        self._received: list[int] = []
        self._passed: dict[psutil.Process, int] = {}  # child -> how many of the received signals it was sent
        self._previous_handlers: dict[int, object] = {}

    def __enter__(self) -> "_SignalsToRanks":
        for signum in _PASSED_ON:
            self._previous_handlers[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame) -> None:
        # Only recorded: the main thread's loop passes it on, so the handler never re-enters pass_on.
        self._received.append(signum)

    def pass_on(self) -> None:
        if not self._received:
            return
        for child in psutil.Process().children():
            for signum in self._received[self._passed.get(child, 0):]:
                with suppress(psutil.NoSuchProcess):
                    child.send_signal(signum)
            self._passed[child] = len(self._received)
