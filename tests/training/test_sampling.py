"""The resumable, length-grouped sampler: same global batches for any world size, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from distrinews.training.sampling import ResumableBatchSampler


@pytest.fixture
def lengths():
    return np.random.default_rng(0).integers(8, 128, size=1000).tolist()


def _epoch(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start_batch=start)
    return list(sampler)


def test_ranks_split_each_global_batch_and_match_one_process(lengths):
    one = ResumableBatchSampler(lengths, 32, num_replicas=1, rank=0, seed=3)
    ranks = [ResumableBatchSampler(lengths, 16, num_replicas=2, rank=r, seed=3) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 1000 // 32
    for whole, part0, part1 in zip(_epoch(one, 1), _epoch(ranks[0], 1), _epoch(ranks[1], 1)):
        assert len(part0) == len(part1) == 16
        assert sorted(part0 + part1) == sorted(whole)


def test_epochs_differ_but_repeat_exactly(lengths):
    sampler = ResumableBatchSampler(lengths, 32, seed=3)
    assert _epoch(sampler, 0) == _epoch(sampler, 0)
    assert _epoch(sampler, 0) != _epoch(sampler, 1)
    seen = [i for batch in _epoch(sampler, 0) for i in batch]
    assert len(seen) == len(set(seen)) == len(sampler) * 32  # no example twice within an epoch


def test_resume_continues_from_the_exact_batch(lengths):
    sampler = ResumableBatchSampler(lengths, 16, num_replicas=2, rank=1, seed=3)
    full = _epoch(sampler, 2)
    assert _epoch(sampler, 2, start=7) == full[7:]


def test_length_grouping_cuts_padding(lengths):
    def padded_tokens(group):
        sampler = ResumableBatchSampler(lengths, 32, seed=0, group_by_length=group)
        return sum(max(lengths[i] for i in batch) * len(batch) for batch in _epoch(sampler, 0))

    assert padded_tokens(True) < 0.7 * padded_tokens(False)


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler([5] * 10, 8, num_replicas=2, rank=0)


def test_padding_collator_pads_to_a_multiple_of_8():
    from distrinews.training.data import PaddingCollator

    batch = PaddingCollator(pad_token_id=0)([
        {"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": 2},
        {"input_ids": [101, 7, 8, 9, 10, 11, 12, 13, 14, 102], "attention_mask": [1] * 10, "labels": 0},
    ])
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].shape == (2, 16)
    assert batch["input_ids"][0].tolist() == [101, 7, 102] + [0] * 13
    assert batch["attention_mask"].sum().item() == 13
    assert batch["labels"].tolist() == [2, 0]


@pytest.fixture
def windows():
    """(lengths, text_index) of 300 texts of 1 to 5 windows each, as tokenize_windows writes them."""
    rng = np.random.default_rng(1)
    text_index = np.repeat(np.arange(300), rng.integers(1, 6, size=300))
    return rng.integers(8, 128, size=len(text_index)).tolist(), text_index


def test_a_texts_windows_stay_together_and_ranks_match_one_process(windows):
    lengths, text_index = windows
    one = ResumableBatchSampler(lengths, 32, seed=3, text_index=text_index)
    ranks = [ResumableBatchSampler(lengths, 16, num_replicas=2, rank=r, seed=3, text_index=text_index)
             for r in range(2)]
    seen = []
    for whole, part0, part1 in zip(_epoch(one, 1), _epoch(ranks[0], 1), _epoch(ranks[1], 1)):
        assert part0 + part1 == whole  # each rank a contiguous share of the same global batch
        shared = set(text_index[part0]) & set(text_index[part1])
        assert len(shared) <= 1  # only a text at the edge of the shares is cut
        seen += whole
    assert len(seen) == len(set(seen)) == len(one) * 32
    texts_in_order = [text for i, text in enumerate(text_index[seen]) if i == 0 or text != text_index[seen][i - 1]]
    # A text's windows follow one another (a text cut between two batches continues at the next batch's start).
    assert len(texts_in_order) <= len(set(texts_in_order)) + len(one)
    assert _epoch(ranks[1], 1, start=5) == _epoch(ranks[1], 1)[5:]
