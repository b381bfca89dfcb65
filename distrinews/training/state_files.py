"""A checkpoint's state files, loaded without running anything they might hold.

A checkpoint may come from anywhere a run resumes from (a folder given with ``--resume``, one fetched from the Hub),
and torch's state files are pickles: a full unpickle runs whatever code the file names. So before accelerate's
``load_state`` (every rank calls ``checked_scheduler_state``):

- the folder holds only the files this program writes (``checkpoint.check_checkpoint_files``);
- every torch file loads as plain data (``weights_only=True``, through accelerate's own ``load`` and the numpy types
  it allows), memory-mapped, so the tensors are not read. accelerate loads them the same way afterwards, but it
  skips RNG states it cannot load, so a bad ``random_states_N.pkl`` would resume with other random numbers: each
  is also tried on private generators here, and resuming is exact or refused;
- the LR scheduler's state is JSON (``SCHEDULER_FILE``), written and read here, never through accelerate's custom
  objects (which it loads with a full unpickle). A checkpoint of an earlier release holds it in such a file instead;
  that file is read as plain data too, wins over a JSON beside it, and is converted
  (``convert_legacy_scheduler_state``).

Everything refused raises UnsafeCheckpointError (exit code 2) with one line naming the file.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import load as load_weights_only  # torch.load with weights_only=True and numpy's types

from .checkpoint import COMPLETE_MARKER, LEGACY_SCHEDULER_FILE, RANK_RNG_FILE, SCHEDULER_FILE, \
    check_checkpoint_files, unsafe_checkpoint

# The files that are not torch pickles: JSON, text and safetensors, which hold data by their format. Any other
# file is loaded as a pickle, with weights_only=True, so a file that a later release adds is checked by default.
_NOT_PICKLED_SUFFIXES = (".json", ".jsonl", ".safetensors")


def save_scheduler_state(folder: Path, scheduler) -> None:
    """Write the LR scheduler's state into checkpoint ``folder`` as JSON (main process)."""
    (folder / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), indent=1) + "\n")


def checked_scheduler_state(checkpoint: Path) -> dict:
    """Check every file of ``checkpoint`` (the module's docstring says how) and return the scheduler's state.

    Raises UnsafeCheckpointError naming the first file that fails, before anything is loaded into the run.
    """
    files = check_checkpoint_files(checkpoint)
    loaded = {path.name: _load_plain_data(checkpoint, path) for path in files if _is_pickled(path.name)}
    for name, states in loaded.items():
        if RANK_RNG_FILE.fullmatch(name):
            _check_random_states(checkpoint, name, states)
    if LEGACY_SCHEDULER_FILE in loaded:
        return _checked_scheduler_state(checkpoint, LEGACY_SCHEDULER_FILE, loaded[LEGACY_SCHEDULER_FILE])
    if not (checkpoint / SCHEDULER_FILE).is_file():
        raise unsafe_checkpoint(checkpoint, f"it holds no {SCHEDULER_FILE} (the LR scheduler's state)")
    try:
        state = json.loads((checkpoint / SCHEDULER_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise unsafe_checkpoint(checkpoint, f"{SCHEDULER_FILE} is not JSON ({err})") from None
    return _checked_scheduler_state(checkpoint, SCHEDULER_FILE, state)


def load_scheduler_state(scheduler, state: dict) -> None:
    """Restore ``scheduler`` from a checked state: only the keys it saves itself, since its load_state_dict sets
    whatever it is given as attributes (the optimizer, say)."""
    own_keys = scheduler.state_dict().keys()
    scheduler.load_state_dict({key: value for key, value in state.items() if key in own_keys})


def convert_legacy_scheduler_state(checkpoint: Path, state: dict) -> None:
    """Replace an earlier release's pickled scheduler state by its JSON (main process, once every rank has checked
    the folder; they wait for it: accelerate's load_state refuses a folder holding custom-object files nobody
    registered)."""
    legacy = checkpoint / LEGACY_SCHEDULER_FILE
    if not legacy.exists():
        return
    # The JSON is complete on disk before the pickle goes; a kill before that leaves the pickle, which wins again.
    # Written in place: a temporary name would be a file no checkpoint holds.
    with (checkpoint / SCHEDULER_FILE).open("w") as handle:
        handle.write(json.dumps(state, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    legacy.unlink()


def _is_pickled(name: str) -> bool:
    return not name.endswith(_NOT_PICKLED_SUFFIXES) and name != COMPLETE_MARKER


def _load_plain_data(checkpoint: Path, path: Path):
    try:
        return load_weights_only(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - whatever a file from elsewhere makes the unpickler raise refuses it
        raise unsafe_checkpoint(checkpoint, f"{path.name} is not plain tensor data ({_first_sentence(err)})") from None


def _first_sentence(err: Exception) -> str:
    # torch's refusal runs over several lines; the line naming what the file asked for is the one that matters.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    line = next((line for line in lines if "GLOBAL" in line or "Unsupported operand" in line), lines[0])
    return line.removeprefix("WeightsUnpickler error: ").split(". ")[0].rstrip(".")


def _check_random_states(checkpoint: Path, name: str, states) -> None:
    """Refuse RNG states that accelerate would fail to restore (it goes on silently then), trying them on private
    generators so the run's own are untouched."""
    try:
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
    except Exception as err:  # noqa: BLE001 - KeyError, TypeError, ValueError, RuntimeError: all mean unusable
        raise unsafe_checkpoint(checkpoint, f"{name} does not hold the random number generators' states "
                                            f"({type(err).__name__}: {err})") from None


def _checked_scheduler_state(checkpoint: Path, name: str, state) -> dict:
    if not isinstance(state, dict) or not isinstance(state.get("last_epoch"), int) or \
            not isinstance(state.get("base_lrs"), list):
        raise unsafe_checkpoint(checkpoint, f"{name} does not hold an LR scheduler's state")
    return state
