"""The serving shortcut that computes only position 0 in the last layer: exact where it applies, refused elsewhere."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          GPT2Config, GPT2ForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

from distrinews.serving.backends import OnnxInt8Backend, build_backend
from distrinews.serving.first_position import read_first_position_only
from distrinews.core.modeling import load_classifier
from distrinews.core.predict import encode_windows, pad_batch, torch_logits
from distrinews.core.windows import WindowPolicy

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99,
             num_labels=4)
ENCODERS = {
    "bert": lambda attn: BertForSequenceClassification(BertConfig(**SMALL, attn_implementation=attn)),
    "distilbert": lambda attn: DistilBertForSequenceClassification(DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=99, num_labels=4, attn_implementation=attn)),
    "roberta": lambda attn: RobertaForSequenceClassification(RobertaConfig(**SMALL, pad_token_id=1,
                                                                           attn_implementation=attn)),
    "electra": lambda attn: ElectraForSequenceClassification(ElectraConfig(**SMALL, embedding_size=16,
                                                                           attn_implementation=attn)),
}


def _batch(rows: int = 3, length: int = 10) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 99, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_the_shortcut_gives_the_same_logits_for_encoder_families(family, attn):
    torch.manual_seed(0)
    model = ENCODERS[family](attn).eval()
    batch = _batch()
    with torch.inference_mode():
        expected = model(**batch).logits
        assert read_first_position_only(model)
        got = model(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert "FirstPosition" in type(_last_layer(model)).__name__


def _last_layer(model):
    base = model.base_model
    return (base.encoder.layer if hasattr(base, "encoder") else base.transformer.layer)[-1]


def test_a_head_that_reads_other_positions_keeps_the_full_layer():
    torch.manual_seed(0)
    model = ENCODERS["bert"]("sdpa").eval()
    pooler = model.bert.pooler
    # A head reading the mean of all positions: the shortcut would change its input, so the probe must catch it.
    pooler.forward = lambda hidden_states: pooler.activation(pooler.dense(hidden_states.mean(dim=1)))
    original_layer = _last_layer(model)
    with torch.inference_mode():
        expected = model(**_batch()).logits
        assert not read_first_position_only(model)
        assert _last_layer(model) is original_layer
        assert torch.equal(model(**_batch()).logits, expected)


def test_a_rewrite_that_fails_to_run_leaves_the_model_serving_as_before():
    torch.manual_seed(0)
    model = ENCODERS["distilbert"]("sdpa").eval()
    original_layer = _last_layer(model)

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected layer internals")

    original_layer.output_layer_norm.forward = broken  # the original layer needs it too: the probe itself fails
    assert not read_first_position_only(model)
    assert _last_layer(model) is original_layer


def test_decoder_classifiers_are_left_alone():
    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, num_labels=4,
                                                     pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    layers = list(model.transformer.h)
    assert not read_first_position_only(model)
    assert list(model.transformer.h) == layers


def test_the_served_int8_graph_matches_the_unmodified_model(tiny_model, tmp_path):
    model, tokenizer = load_classifier(str(tiny_model))
    reference = torch_logits(copy.deepcopy(model).eval())
    attention = model.config._attn_implementation
    backend = build_backend(model, "int8", cache_dir=tmp_path, cache_key="tiny")
    assert model.config._attn_implementation == attention  # exported with eager attention, then put back
    assert "FirstPosition" in type(_last_layer(model)).__name__  # the export came from the rewritten model
    assert isinstance(backend, OnnxInt8Backend)
    texts = ["the", "shares profit investors quarterly earnings merger", "nasa " * 40, "coach league"]
    windows = [text.windows[0] for text in encode_windows(tokenizer, texts, WindowPolicy(32))]
    batch = pad_batch(windows, tokenizer.pad_token_id)
    assert np.abs(backend.logits(batch) - reference(batch)).max() < 5e-3
    torch_backend = build_backend(copy.deepcopy(model), "none", cache_dir=tmp_path, cache_key="tiny")
    assert np.abs(torch_backend.logits(batch) - reference(batch)).max() < 1e-5
