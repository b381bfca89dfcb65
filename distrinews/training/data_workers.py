"""What each DataLoader worker process does before its first batch (the loaders' ``worker_init_fn``).

A worker hands every batch's tensors to the training process as file descriptors, through a Unix socket
that Python's multiprocessing binds at ``$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``. A socket path has room
for 107 bytes on Linux (103 on macOS), so a TMPDIR longer than 75 bytes (a job scheduler's per-job folder, a
pytest ``tmp_path``) makes the bind fail inside the queue's feeder thread, which prints the error and drops
the batch: the training process then waits for it forever, with every worker idle. Newer CPythons fall back
to a shorter folder themselves (python/cpython#132124, 3.13 on); this does the same for the Pythons before.
"""

from __future__ import annotations

import os
import sys
import tempfile

from .preemption import ignore_stop_signals

# sun_path's size, its final NUL included, and what multiprocessing adds to the temp folder's path.
SOCKET_PATH_BYTES = 104 if sys.platform == "darwin" else 108
SOCKET_SUFFIX = os.path.join("pymp-12345678", "listener-12345678")
SHORT_TEMP_DIRS = ("/tmp", "/var/tmp", "/usr/tmp")


def start_data_worker(worker_id: int) -> None:
    ignore_stop_signals()
    fit_socket_paths()


def fit_socket_paths() -> None:
    """In this worker process only, move temporary files to a system folder short enough for a socket path."""
    if os.name != "posix" or _socket_path_fits(tempfile.gettempdir()):
        return
    for folder in SHORT_TEMP_DIRS:
        if _socket_path_fits(folder) and os.access(folder, os.W_OK | os.X_OK):
            tempfile.tempdir = folder
            return


def _socket_path_fits(folder: str) -> bool:
    return len(os.fsencode(os.path.join(folder, SOCKET_SUFFIX))) < SOCKET_PATH_BYTES
