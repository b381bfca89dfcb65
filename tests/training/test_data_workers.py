"""Data-loading workers under a long TMPDIR: every batch still arrives (distrinews/training/data_workers.py)."""

import os
import sys
import tempfile

import pytest
import torch
from torch.utils.data import DataLoader

from distrinews.training import loaders
from distrinews.training.config import TrainConfig
from distrinews.training.data_workers import SOCKET_PATH_BYTES, SOCKET_SUFFIX


@pytest.fixture
def long_temp_dir(tmp_path, monkeypatch):
    """A temporary folder as deep as a scheduler's per-job one: too long to hold multiprocessing's sockets."""
    folder = tmp_path / ("job-" + "x" * max(0, SOCKET_PATH_BYTES - len(str(tmp_path)) - len(SOCKET_SUFFIX)))
    folder.mkdir()
    assert len(os.fsencode(os.path.join(folder, SOCKET_SUFFIX))) >= SOCKET_PATH_BYTES
    monkeypatch.setattr(tempfile, "tempdir", str(folder))  # what $TMPDIR sets; forked workers inherit it
    return folder


def _examples():
    # Tensors, not plain numbers: a worker passes a tensor's storage to the training process over a socket.
    return [{"input_ids": torch.tensor([index])} for index in range(16)]


def _numbers(loader) -> list[int]:
    return [number for batch in loader for number in batch["input_ids"].flatten().tolist()]


def test_training_loaders_deliver_every_batch_under_a_long_temp_dir(long_temp_dir, monkeypatch):
    monkeypatch.setattr(loaders, "BATCH_WAIT_SECONDS", 30)  # a lost batch fails the test in 30 s, not 10 minutes
    config = TrainConfig(dataloader_num_workers=2)
    loader = loaders.data_loader(_examples(), None, config, torch.device("cpu"), batch_size=4)
    assert _numbers(loader) == list(range(16))
    loaders.release_loader_workers([loader])


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="CPython 3.13 on shortens the socket folder itself")
def test_without_the_worker_start_the_batches_are_lost(long_temp_dir):
    """The control for the test above: plain workers drop every batch, and without a timeout the wait never ends."""
    with pytest.raises(RuntimeError, match="timed out"):
        _numbers(DataLoader(_examples(), batch_size=4, num_workers=2, timeout=5))
