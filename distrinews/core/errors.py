"""Every error DistriNews reports to a user, and the exit code each one ends a command with.

Each class names what went wrong in its message (the file, row, field or value and what to do), so commands
print one line instead of a traceback. The exit codes are what a job scheduler or a notebook reads
(docs/README-reliability.md):

| code | meaning | classes |
| --- | --- | --- |
| 0 | done | |
| 1 | the run is complete but the Hub push failed: `distrinews push` retries it | HubPushError |
| 2 | bad input: config, data, model, output_dir, a checkpoint of another run, one the Hub did not hand over or one with files that are not safe to load, a text, a Hub command's repo id, folder or missing token | InputError and its subclasses |
| 3 | the loss was non-finite for max_nonfinite_steps steps in a row | NonFiniteLossError |
| 4 | a checkpoint could not be written (the previous one is intact) | CheckpointWriteError |
| 75 | stopped by SIGTERM/SIGINT after writing a checkpoint: run the same command to resume | TrainingStopped |
| 128+N | killed by signal N | |

The Space answers with HTTP statuses instead: 422 for ``TextError`` and bad requests, 413 for ``RequestTooLarge``
and bodies over the limit, 429 for ``QueueFull``, 500 for ``InferenceFailed`` (that request only), 503 while the
model loads or when ``ModelLoadError`` stopped it.

This module imports nothing, so any part (training, serving, the Hub) can raise these without pulling in another.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used; the message names what and where."""


class ConfigError(InputError):
    """A config value that cannot be used; the message names the field and the value."""


class DataError(InputError):
    """Input data that cannot be trained on; the message names the file, row and problem."""


class ModelLoadError(InputError):
    """A model that cannot be loaded safely; the message says which and why."""


class OutputDirError(InputError):
    """output_dir cannot be written to, or has too little free space for this run."""


class CheckpointMismatchError(InputError):
    """The checkpoint to resume from was written by a run with different data, model or batching."""


class UnsafeCheckpointError(InputError):
    """A checkpoint holding a file this program does not write (or a link, a folder), or a state file that is not
    plain data (a pickle that would run code when loaded): nothing of it was loaded; the message names the file."""


class CheckpointDownloadError(InputError):
    """The newest checkpoint on the Hub (hub_strategy=checkpoint) could not be fetched; the message says why."""


class TextError(InputError):
    """A text with nothing to classify; the message says why (the caller adds where). HTTP 422 in the Space."""


class ServingConfigError(InputError):
    """A serving setting that cannot be used; the message names the environment variable and the value."""


class ModelCardError(InputError):
    """A run folder that lacks what the card is built from; the message names the missing file."""


class HubInputError(InputError):
    """A Hub command that cannot start: a malformed repo id or revision, a run folder without a model, a target
    folder that cannot be used, no token, or HF_HUB_OFFLINE; nothing was uploaded. The message says which."""


class KaggleBundleError(InputError):
    """The Kaggle bundle cannot be written; the message names the option or file and what to do."""


class HubPushError(RuntimeError):
    """The push did not happen; the message says why and how to push the saved run later."""


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite gradients for too many steps in a row."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, I/O error); the previous complete one is intact."""


class TrainingStopped(Exception):
    """Raised by the training loop after the stop checkpoint is written: the run can be resumed."""


class QueueFull(RuntimeError):
    """The Space's batcher holds as many texts as it may: HTTP 429, retry after ``retry_after_s``."""

    def __init__(self, waiting: int, capacity: int, retry_after_s: int):
        super().__init__(f"server busy: {waiting} texts waiting (capacity {capacity}); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class InferenceFailed(RuntimeError):
    """The model raised for these texts of a request even when each ran alone (a bug): HTTP 500 for that
    request only. The message names the texts only: the model's own error (``error``, which can hold paths or
    the backend's internals) is for the server's log."""

    def __init__(self, indices: list[int], error: BaseException):
        super().__init__(f"inference failed for texts {indices[:20]} (an internal error; the server log has it)")
        self.indices = indices
        self.error = error


class RequestTooLarge(RuntimeError):
    """A request whose texts need more model work (``windows``) than one request may ask for (``limit``): HTTP
    413."""

    def __init__(self, message: str, *, windows: int, limit: int):
        super().__init__(message)
        self.windows = windows
        self.limit = limit


class EvaluationCountError(AssertionError):
    """A split was not counted exactly once per example (a bug, so no exit code: the traceback is the report)."""


EXIT_PUSH_FAILED, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_CHECKPOINT_WRITE_FAILED = 1, 2, 3, 4
# EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry" -- exactly this case.
EXIT_STOPPED = 75
EXIT_CODES: dict[type[BaseException], int] = {
    HubPushError: EXIT_PUSH_FAILED, InputError: EXIT_BAD_INPUT, NonFiniteLossError: EXIT_NONFINITE,
    CheckpointWriteError: EXIT_CHECKPOINT_WRITE_FAILED, TrainingStopped: EXIT_STOPPED,
}


def exit_code_for(error: BaseException) -> int | None:
    """The exit code ``error`` ends a command with, or None for an error that is a bug (let it raise)."""
    return next((code for kind, code in EXIT_CODES.items() if isinstance(error, kind)), None)
