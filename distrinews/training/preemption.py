"""Stop training cleanly on SIGTERM or SIGINT: finish the step, write a checkpoint, exit with EXIT_STOPPED.

Preemption (spot machines, Kaggle, SLURM, ``docker stop``) and Ctrl-C arrive as SIGTERM or SIGINT,
often on one rank only. The handler here only raises a flag; the training loop all-reduces that flag
at every optimizer step (train.py, one number next to the gradient all-reduce), so every rank sees
the same decision at the same step and none is left waiting in a collective. Then all ranks write a
checkpoint together and exit with ``EXIT_STOPPED``; running the same command again resumes
(``resume=auto``). A second signal exits at once, without a checkpoint.

Signals closer together than ``REPEAT_WINDOW_SECONDS`` count as one: a Ctrl-C in a terminal or a
job-wide SIGTERM reaches each rank twice, once directly and once forwarded by the launcher (the torchrun
agent that ``accelerate launch`` runs, or ``distrinews launch`` itself), and that must not turn into "exit now".

This module knows nothing about process groups or accelerate: train.py does the all-reduce.
"""

from __future__ import annotations

import os
import signal
import time

from ..core.errors import EXIT_STOPPED

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_SECONDS = 2.0


class StopRequest:
    """Records SIGTERM/SIGINT while installed; ``requested`` is what this rank votes at the next step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._first_signal_at: float | None = None
        self._previous_handlers: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self._first_signal_at is not None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def exit_agreed(self) -> None:
        """Every rank agreed to exit (the stop checkpoint is written, or a write failed on some rank): from now on
        ignore stop signals while this process exits.

        When one rank exits first, the torchrun agent sends SIGTERM to the others; that must not turn
        their own exit code (EXIT_STOPPED, or 4 for a failed write) into death by signal. The handlers are not
        restored after this.
        """
        ignore_stop_signals()
        self._previous_handlers.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._first_signal_at is None:
            self._first_signal_at, self.signal_name = now, name
            _say(f"received {name}: finishing this step, writing a checkpoint, then exiting with code "
                 f"{EXIT_STOPPED} (send it again to exit at once, without a checkpoint)")
        elif now - self._first_signal_at > REPEAT_WINDOW_SECONDS:
            _say(f"received {name} again: exiting now without a checkpoint")
            # Die of the signal itself, so the exit status says what happened (128 + signal number).
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """Ignore SIGTERM/SIGINT; also the DataLoader ``worker_init_fn``, so workers leave them to the training process.

    A Ctrl-C or job-wide SIGTERM also reaches the data-loading workers; by default they would die and
    take the graceful stop down with them ("DataLoader worker exited unexpectedly"). They still end
    when the training process shuts its loaders down or dies.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _say(message: str) -> None:
    # os.write, not print: a signal handler may interrupt a print and re-entering it raises.
    os.write(2, f"\n[pid {os.getpid()}] {message}\n".encode())  # own line, even after a progress bar
