"""Occlusion (``distrinews.serving.explain``) with the tiny model's real tokenizer: which parts a text is cut into in
any script, the weights a transparent stand-in model gives them, the empty-input baseline of a one-word text, the
window budget of a long text, and the real model through the package's predict path."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from distrinews.core.errors import TextError
from distrinews.core.modeling import load_classifier
from distrinews.core.predict import model_task, pad_batch, predict_with, torch_logits
from distrinews.core.tasks import SingleLabelTask
from distrinews.core.windows import WindowPolicy
from distrinews.serving.explain import occlusion_of

TASK = SingleLabelTask(("World", "Sports"))
POLICY = WindowPolicy(32)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def keyword_logits(tokenizer):
    """A transparent stand-in model: the Sports logit is 2 per sports word in the window, World's is 0."""
    sports = {tokenizer.convert_tokens_to_ids(word) for word in ("striker", "league")}
    return lambda window: np.array([0.0, 2.0 * sum(token in sports for token in window)])


def explain(tokenizer, text, logits_of=None, **options):
    occlusion = occlusion_of(tokenizer, options.pop("policy", POLICY), text, **options)
    logits_of = logits_of or keyword_logits(tokenizer)
    return occlusion, occlusion.explanation(TASK, [logits_of(window) for window in occlusion.windows])


def test_each_word_weighs_the_drop_in_probability_its_removal_causes(tokenizer):
    occlusion, explanation = explain(tokenizer, "The striker joined the league, again")
    assert explanation.pieces == ["The ", "striker ", "joined ", "the ", "league", ", ", "again"]
    assert len(occlusion.windows) == 8 and all(len(w) < len(occlusion.windows[0]) for w in occlusion.windows[1:])
    sports = lambda words: 1 / (1 + np.exp(-2.0 * words))  # noqa: E731 - softmax of (0, 2 * words)
    assert explanation.prediction.label == "Sports" and explanation.prediction.score == pytest.approx(sports(2))
    weights = dict(zip(explanation.pieces, explanation.weights))
    assert weights["striker "] == weights["league"] == pytest.approx(sports(2) - sports(1))
    assert weights["The "] == weights["joined "] == weights[", "] == weights["again"] == pytest.approx(0.0)
    assert max(weight for _, weight in explanation.highlighted()) == 1.0
    assert explanation.tokens_read == len(occlusion.windows[0]) - 2  # all but [CLS] and [SEP]
    summary = explanation.summary()
    assert f"Read the whole text ({explanation.tokens_read} tokens)" in summary and "**Sports**" in summary


def test_a_one_word_text_is_weighed_against_the_empty_input(tokenizer):
    occlusion, explanation = explain(tokenizer, "Olympics")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert occlusion.windows[1] == [cls, sep]  # the only word left out: the special tokens alone
    assert explanation.pieces == ["Olympics"] and explanation.weights == [pytest.approx(0.0)]
    assert "empty" in explanation.summary()
    _, striker = explain(tokenizer, "striker")
    assert striker.weights == [pytest.approx(1 / (1 + np.exp(-2.0)) - 0.5)]


@pytest.mark.parametrize("text, pieces", [
    ("株価が上昇した", ["株", "価", "が", "上", "昇", "した"]),  # ideographs are the tokenizer's words; kana runs too
    ("ราคาหุ้นพุ่งขึ้น", ["ราคาหุ้นพุ่งขึ้น"]),  # one token ([UNK] here): what the model reads is one part
    ("Toyota 株価、上昇", ["Toyota ", "株", "価", "、", "上", "昇"]),
    # Cleaned first, as predict does; BERT's normalizer drops U+FFFD, so it is no part: the model never reads it.
    ("\u202enasa\u202c \ud83d chip \x1b", ["nasa \ufffd ", "chip"]),
])
def test_scripts_without_spaces_are_cut_into_tokens(tokenizer, text, pieces):
    occlusion, explanation = explain(tokenizer, text)
    assert explanation.pieces == pieces and len(occlusion.windows) == len(pieces) + 1
    assert all(isinstance(weight, float) for weight in explanation.weights)


def test_a_long_text_is_explained_within_its_budget_and_says_what_was_read(tokenizer):
    text = "the striker joined the league " * 10_000  # 300,000 characters
    occlusion, explanation = explain(tokenizer, text[:100_000], max_parts=10, total_chars=len(text))
    assert len(occlusion.windows) == 11 and all(len(window) <= POLICY.max_length for window in occlusion.windows)
    assert explanation.truncated and explanation.tokens_read == POLICY.max_length - 2
    assert text.startswith("".join(explanation.pieces))
    assert explanation.weights[10:] == [None] * (len(explanation.pieces) - 10)
    summary = explanation.summary()
    assert "Explained the first 30 tokens" in summary and "of 300,000 characters" in summary
    assert f"The first 10 of {len(explanation.pieces)} parts were scored" in summary


def test_a_text_cut_before_it_reached_the_explainer_is_not_called_whole(tokenizer):
    _, explanation = explain(tokenizer, "the striker joined", total_chars=5_000)
    assert explanation.truncated and "of 5,000 characters" in explanation.summary()


def test_a_text_with_nothing_to_classify_is_refused(tokenizer):
    for blank in ("", " \u200b ", "\x00"):
        with pytest.raises(TextError):
            occlusion_of(tokenizer, POLICY, blank)


def test_the_explained_window_is_what_the_predict_path_reads(tiny_model):
    model, tokenizer = load_classifier(str(tiny_model))
    logits_of = torch_logits(model.eval())
    text = "nasa launches a satellite as chip makers report new profit"
    occlusion = occlusion_of(tokenizer, POLICY, text)
    logits = [logits_of(pad_batch([window], tokenizer.pad_token_id, 1))[0] for window in occlusion.windows]
    explanation = occlusion.explanation(model_task(model), logits)
    (predicted,) = predict_with(logits_of, tokenizer, model_task(model), [text], max_length=32, policy=POLICY)
    for label, probability in predicted.probabilities.items():
        assert explanation.prediction.probabilities[label] == pytest.approx(probability, abs=1e-5)
    assert all(isinstance(weight, float) for weight in explanation.weights)
