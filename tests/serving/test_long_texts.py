"""Whole articles: windows on the one predict path, their combination, their cost, and their place in batches.

The model here is a transparent one over the real tiny WordPiece tokenizer: its logits count the sports and
business words of each window, so what a window reads decides its scores, and which windows were read is
visible in the answer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from conftest import CLASS_WORDS, FILLER
from distrinews.core.modeling import load_classifier
from distrinews.core.predict import predict_with
from distrinews.core.windows import WindowPolicy, combine_window_scores, scores_from_logits
from distrinews.serving.batching import MicroBatcher
from distrinews.core.tasks import SingleLabelTask

TASK = SingleLabelTask(("Sports", "Business"))  # one topic per text: softmax, windows averaged


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_classifier(str(tiny_model))[1]


def counting_model(tokenizer, calls: list[int]):
    """Logits (sports words, business words) per row; records how many rows each call ran."""
    sports = set(tokenizer.convert_tokens_to_ids(CLASS_WORDS[2]))
    business = set(tokenizer.convert_tokens_to_ids(CLASS_WORDS[3]))

    def logits_of(batch):
        calls.append(len(batch["input_ids"]))
        ids, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
        count = lambda words: np.array([np.isin(row[m], list(words)).sum() for row, m in zip(ids, mask)])  # noqa: E731
        return np.stack([count(sports), count(business)], axis=1).astype(np.float32)

    return logits_of


def article(filler_words: int, topic_words: list[str]) -> str:
    """``filler_words`` words that name no topic, then the topic words: all past the first window."""
    return " ".join(FILLER[i % len(FILLER)] for i in range(filler_words)) + " " + " ".join(topic_words)


def test_an_article_whose_topic_sits_past_the_first_window_is_classified_by_it(tokenizer):
    text = article(300, CLASS_WORDS[2][:6] * 3)
    whole = predict_with(counting_model(tokenizer, []), tokenizer, TASK, [text], max_length=128)[0]
    start_only = predict_with(counting_model(tokenizer, []), tokenizer, TASK, [text], max_length=128,
                              policy=WindowPolicy(128, max_windows=1))[0]
    assert whole.label == "Sports" and whole.windows == 4 and not whole.truncated
    assert start_only.probabilities == {"Sports": 0.5, "Business": 0.5} and start_only.truncated
    # The text's probabilities are the mean of its windows' softmax; each window sums to 1, so does the mean.
    assert sum(whole.probabilities.values()) == pytest.approx(1)
    assert whole.scores("none")["Sports"] == pytest.approx(np.mean(whole.window_logits[:, 0]))


def test_a_multi_label_article_gives_each_label_found_in_any_window(tokenizer):
    """A multi-label model's scores are sigmoids combined by their max: a topic in one window is in the text."""
    from distrinews.core.tasks import MultiLabelTask

    sports, business = " ".join(CLASS_WORDS[2][:4]), " ".join(CLASS_WORDS[3][:4])
    text = f"{sports} {article(300, [business])}"  # sports in the first window, business in the last
    (prediction,) = predict_with(counting_model(tokenizer, []), tokenizer, MultiLabelTask(TASK.labels, 0.9), [text],
                                 max_length=128)
    assert prediction.windows >= 3 and prediction.score_function == "sigmoid"
    four_words = 1 / (1 + np.exp(-4))  # each window's sigmoid of its 4 topic words; the mean would be far lower
    assert prediction.probabilities == pytest.approx({"Sports": four_words, "Business": four_words})
    assert prediction.labels == ["Sports", "Business"]  # both at or above 0.9: most probable first, ties in order


def test_window_scores_combine_by_their_kind():
    window_logits = np.array([[4.0, -4.0], [-4.0, -4.0], [-4.0, 4.0]])
    softmax = combine_window_scores(scores_from_logits(window_logits, "softmax"), "softmax")
    sigmoid = combine_window_scores(scores_from_logits(window_logits, "sigmoid"), "sigmoid")
    assert softmax.sum() == pytest.approx(1) and softmax[0] == pytest.approx(softmax[1])  # one topic: averaged
    assert sigmoid == pytest.approx([1 / (1 + np.exp(-4))] * 2)  # a label in any window is in the text
    with pytest.raises(ValueError, match="function_to_apply must be one of softmax, sigmoid, none"):
        scores_from_logits(window_logits, "relu")


def test_the_cost_grows_linearly_with_the_windows(tokenizer):
    windows, tokens = [], []
    for words in (100, 400, 800, 1200):
        calls: list[int] = []
        (prediction,) = predict_with(counting_model(tokenizer, calls), tokenizer, TASK, [article(words, [])],
                                     max_length=128)
        assert sum(calls) == prediction.windows  # the model runs each window once: the cost is per window
        windows.append(prediction.windows)
        tokens.append(words)
    # A window every 94 tokens (128 with [CLS]/[SEP], 32 shared with the next): windows = 1 + ceil((n - 126) / 94).
    assert windows == [1 + max(0, -(-(n - 126) // 94)) for n in tokens] == [1, 4, 9, 13]


def test_one_long_text_does_not_stall_the_short_ones_behind_it():
    """Batches are filled round-robin over requests: a headline sent while a 40-window article waits runs in
    the next batch, not after the article's last window."""
    ran: list[list[str]] = []

    def run_batch(items):
        ran.append(list(items))
        time.sleep(0.01 * len(items))  # cost grows with the windows in the batch
        return list(items)

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=8, max_wait_ms=1, max_queue=64)
        await batcher.start()
        try:
            long = asyncio.create_task(batcher.submit([f"article-{i}" for i in range(40)]))
            await asyncio.sleep(0.005)  # the article's first batch is running
            started = time.perf_counter()
            short = await batcher.submit(["headline"])
            short_s = time.perf_counter() - started
            await long
            return short, short_s
        finally:
            await batcher.stop()

    short, short_s = asyncio.run(scenario())
    assert short == ["headline"]
    batch_of_headline = next(i for i, batch in enumerate(ran) if "headline" in batch)
    assert batch_of_headline <= 1, ran  # the one running when it came, then its own turn
    assert sum(len(batch) for batch in ran) == 41 and short_s < 0.5 * 0.01 * 40
