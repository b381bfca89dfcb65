"""Deterministic, resumable, length-grouped batches for data-parallel training.

The sampler first forms *global* batches (``per_device_batch_size x num_replicas`` examples) from
the seed and the epoch alone, then hands each rank its share. Two consequences we rely on:

* 1 process x batch 2B and 2 processes x batch B see exactly the same examples at every step, so
  their loss curves agree (tests/training/test_ddp_equivalence.py);
* the position in an epoch is just a batch index, so a resumed run continues from the exact batch
  where it stopped, with the same order as an uninterrupted run.

An example is a window of a text (``train_windows=all``: a long text gives several, ``data.tokenize_windows``).
The order shuffles texts, not windows: a text's windows follow one another, and where texts have several windows
each rank takes a contiguous share of every global batch, so a text's windows are trained on one rank, in one
step, unless the text straddles the edge of a share (at most one text per edge).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

# How many global batches are sorted together by length. Larger pads less but makes the batch
# order less random; 50 is the value the HF Trainer's length grouping has long used.
MEGABATCH_MULTIPLIER = 50


class ResumableBatchSampler:
    """Yields this rank's lists of example indices for one epoch, starting at ``start_batch``.

    ``text_index`` gives each example's text (ascending, as ``tokenize_windows`` writes it); default: every example
    is a text of its own."""

    def __init__(self, lengths: Sequence[int], per_device_batch_size: int, *, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, group_by_length: bool = True,
                 text_index: Sequence[int] | None = None) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths)
        self.per_device_batch_size = per_device_batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.global_batch_size = per_device_batch_size * num_replicas
        if len(self.lengths) < self.global_batch_size:
            raise ValueError(f"{len(self.lengths)} training examples are fewer than one global batch "
                             f"({per_device_batch_size} per device x {num_replicas} processes)")
        texts = np.arange(len(self.lengths)) if text_index is None else np.asarray(text_index)
        self.text_starts = np.flatnonzero(np.r_[True, texts[1:] != texts[:-1]])
        self.windows_per_text = np.diff(np.r_[self.text_starts, len(texts)])
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch (it seeds the order) and the first batch to yield (for resuming)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        # The last partial global batch is dropped so every rank runs the same number of steps.
        return len(self.lengths) // self.global_batch_size

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches, identical on every rank and for every world size."""
        rng = np.random.default_rng([self.seed, epoch])
        examples = len(self) * self.global_batch_size
        texts = rng.permutation(len(self.text_starts))
        # The texts whose windows fill the epoch's whole global batches (the windows past them are cut below).
        texts = texts[:np.searchsorted(np.cumsum(self.windows_per_text[texts]), examples) + 1]
        if self.group_by_length:
            # A text's first window is its longest: the others are as long, but for the last.
            text_lengths = self.lengths[self.text_starts]
            megabatch = self.global_batch_size * MEGABATCH_MULTIPLIER
            chunks = [texts[i:i + megabatch] for i in range(0, len(texts), megabatch)]
            texts = np.concatenate([c[np.argsort(-text_lengths[c], kind="stable")] for c in chunks])
        batches = self._windows_of(texts)[:examples].reshape(len(self), self.global_batch_size)
        if self.group_by_length:
            # Sorted megabatches would otherwise run from long to short every time.
            batches = batches[rng.permutation(len(batches))]
        return list(batches)

    def _windows_of(self, texts: np.ndarray) -> np.ndarray:
        """The example indices of ``texts``' windows, text after text."""
        counts = self.windows_per_text[texts]
        first_of_each = np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(self.text_starts[texts], counts) + np.arange(counts.sum()) - first_of_each

    def __iter__(self) -> Iterator[list[int]]:
        several_windows = self.windows_per_text.max() > 1
        share = self.per_device_batch_size
        for batch in self.global_batches(self.epoch)[self.start_batch:]:
            if several_windows:  # contiguous, so a text's windows stay on one rank
                yield batch[self.rank * share:(self.rank + 1) * share].tolist()
            else:
                # Strided, so every rank gets a similar mix of lengths within the batch and no rank waits for
                # another at the gradient all-reduce.
                yield batch[self.rank::self.num_replicas].tolist()
