"""``distrinews launch``: check the run once, then ``accelerate launch`` it in this process, on the hardware found.

    distrinews launch --output_dir runs/ag_news [TRAIN OPTIONS]      # every GPU found; 2 CPU processes without one
    distrinews launch --dry_run --output_dir runs/ag_news            # print the equivalent command and exit

accelerate's own launcher runs in this interpreter (``accelerate.commands.launch``), so a virtual environment
that is not activated works, and the ranks' documented exit codes (``distrinews/core/errors.py``) come back
unchanged: 2 for bad input, 3, 4, 75 for a stop that wrote its checkpoint. Before any rank starts,
``preflight`` checks what each of them would otherwise fail on, and on a CPU the run's cost is estimated.
"""

from __future__ import annotations

import json
import logging
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .config import parse_train_config
from .hardware import list_gpus, plan_launch
from ..core.errors import EXIT_STOPPED

# What a rank that failed with its documented code makes torch's elastic agent log (the rank already said why),
# and the loggers that say it.
_AGENT_NOISE = ("failed (exitcode", "Sending process", "Received ", "Got termination signal")
_AGENT_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api")


def launch(train_argv: Sequence[str], *, dry_run: bool = False, main_process_port: int | None = None) -> int:
    config = parse_train_config(train_argv)
    plan = plan_launch(list_gpus())
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

        print(describe_cpu_cost(config, plan.processes, report.model, report.tokens_per_example,
                                report.train_examples, report.eval_sizes), flush=True)
    del report  # the ranks load their own model; this one's memory goes before they start
    return _run_accelerate_launch(launch_args, Path(config.output_dir))


def _run_accelerate_launch(launch_args: list[str], output_dir: Path) -> int:
    """accelerate launch, in this process; the exit code of the rank that failed first, without the launcher's
    traceback (the rank printed its own error)."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(launch_args)
    quiet = _QuietAgent()
    for name in _AGENT_LOGGERS:  # a logger's filters see only its own records, not its children's
        logging.getLogger(name).addFilter(quiet)
    try:
        launch_command(args)
    except ChildFailedError as err:  # several processes (torchrun)
        rank, failure = err.get_first_failure()
        return _rank_exit_code(rank, failure.exitcode)
    except subprocess.CalledProcessError as err:  # one process: accelerate's simple launcher
        return _rank_exit_code(0, err.returncode)
    except SignalException as err:  # SIGTERM/SIGINT here: the agent passed it on to the ranks and waited for them
        if _stopped_with_checkpoint(output_dir):
            return EXIT_STOPPED
        return 128 + err.sigval
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


def _stopped_with_checkpoint(output_dir: Path) -> bool:
    """Whether the run's log ends with the record a stop writes after its checkpoint."""
    try:
        last = (output_dir / "log.jsonl").read_text().splitlines()[-1]
        return json.loads(last).get("type") == "stopped"
    except (OSError, IndexError, ValueError):
        return False


class _QuietAgent(logging.Filter):
    """Drops the elastic agent's report of a rank that exited with a code of its own: the rank said why."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_AGENT_NOISE)
