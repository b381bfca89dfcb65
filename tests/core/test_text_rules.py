"""The text rules and the one predict path take any string JSON or a command line can carry.

The strategies draw from every Unicode code point, lone surrogates included (hypothesis' default text strategy
leaves them out, which is how a surrogate that failed whole batches went unnoticed).
"""

from __future__ import annotations

import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ANY_TEXT, ODD_TEXTS
from distrinews.core.modeling import load_classifier
from distrinews.core.predict import predict_texts
from distrinews.core.windows import MAX_CHARS_PER_TOKEN
from distrinews.core.texts import TextError, check_text, clean_text
from space_support import LABELS

@pytest.fixture(scope="module")
def reference(space_model):
    model, tokenizer = load_classifier(str(space_model))
    return model, tokenizer


def _by_the_rule(text: str) -> str:
    """clean_text as the module docstring states it, one character at a time (the slow, obvious way)."""
    def one(char: str) -> str:
        if char.isspace():
            return " "
        category = unicodedata.category(char)
        if category in ("Cs", "Cc"):
            return "\ufffd" if category == "Cs" else " "
        return "" if category == "Cf" and char not in "\u200c\u200d" else char
    return " ".join(unicodedata.normalize("NFC", "".join(map(one, text))).split())


def test_every_code_point_is_cleaned_as_the_rule_says():
    for plane in range(17):  # the fast path only looks for changes in some planes: this checks all of them
        text = "".join(map(chr, range(plane << 16, (plane + 1) << 16)))
        assert clean_text(text) == _by_the_rule(text), f"plane {plane}"


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT)
def test_cleaning_any_string_gives_encodable_idempotent_text(text):
    assert clean_text(text) == _by_the_rule(text)
    cleaned = clean_text(text)
    cleaned.encode("utf-8")  # no surrogate survives
    assert clean_text(cleaned) == cleaned
    assert not any(ord(c) < 32 or ord(c) == 127 for c in cleaned)
    assert cleaned == cleaned.strip() and "  " not in cleaned
    try:
        assert check_text(text) == cleaned and cleaned
    except TextError:
        assert cleaned == ""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=6))
def test_the_predict_function_classifies_any_strings(reference, texts):
    model, tokenizer = reference
    predictions = predict_texts(model, tokenizer, texts, max_length=64)
    assert len(predictions) == len(texts)
    for prediction in predictions:
        assert prediction.label in LABELS and abs(sum(prediction.probabilities.values()) - 1) < 1e-4


def test_an_odd_text_gets_the_label_of_its_cleaned_form_in_any_company(reference):
    model, tokenizer = reference
    alone = [predict_texts(model, tokenizer, [text], max_length=64)[0].label for text in ODD_TEXTS]
    together = [p.label for p in predict_texts(model, tokenizer, ODD_TEXTS, max_length=64)]
    cleaned = [p.label for p in predict_texts(model, tokenizer, [clean_text(t) for t in ODD_TEXTS], max_length=64)]
    assert alone == together == cleaned


def test_a_megabyte_word_is_cut_before_tokenizing_and_flagged(reference):
    model, tokenizer = reference

    def timed(text: str):
        started = time.perf_counter()
        (prediction,) = predict_texts(model, tokenizer, [text], max_length=64)
        return prediction, time.perf_counter() - started

    at_limit, limit_seconds = timed("x" * (64 * MAX_CHARS_PER_TOKEN))
    huge, huge_seconds = timed("x" * 1_000_000)
    assert huge.truncated and huge.label == at_limit.label
    # Uncut, the tokenizer alone took 0.6-2 s; cut, it costs what a text at the limit costs (relative, so a
    # loaded machine slows both sides alike).
    assert huge_seconds < 3 * limit_seconds + 0.2, (huge_seconds, limit_seconds)
