"""Ending a process group in the one order that neither hangs nor aborts the process at exit.

gloo frees a finished collective's tensors on its worker thread, which needs the GIL, and the process group's
destructor joins that thread while holding the GIL. When the destructor ran (as a DDP model was freed, or at
interpreter exit) before the worker had freed the barrier and the collectives it waited on, a finished process
never exited (the training loop: 3 of 5 test runs hung so) or died of "terminate called without an active
exception" (a 2-process ``distrinews evaluate --backend``). Holding the last barrier's handle until the group is
gone leaves the last reference, and the freeing, to this thread.
"""

from __future__ import annotations

from typing import Callable

import torch


def end_process_group(state, release: Callable[[], None] = lambda: None) -> None:
    """The last barrier of accelerate's ``state``, then the end of its process group; ``release`` drops the caller's
    own references to the group (a DDP model) while the barrier's handle is still held. One process: nothing."""
    if not torch.distributed.is_initialized():
        return
    last_barrier = torch.distributed.barrier(async_op=True)
    last_barrier.wait()
    state.destroy_process_group()  # unregisters the group; what the caller holds may still reference it
    release()
    del last_barrier
