"""Which learning rate and weight decay each parameter of a classifier trains with."""

from __future__ import annotations

import pytest
import torch

from distrinews.core.formats import AG_NEWS
from distrinews.core.tasks import SingleLabelTask
from distrinews.training.config import TrainConfig
from distrinews.core.modeling import load_classifier
from distrinews.training.optimization import parameter_settings
from distrinews.training.optimization import build_optimizer


def _settings(model, **recipe):
    config = TrainConfig(model_name_or_path="unused", dataset="unused", learning_rate=1e-4, weight_decay=0.01,
                         **recipe)
    return {name: (lr, decay) for name, _, lr, decay in parameter_settings(model, config)}


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_classifier(str(tiny_model), for_training=True, task=SingleLabelTask(AG_NEWS.label_names))[0]


def test_defaults_train_everything_at_one_rate_and_spare_biases_and_norms_from_decay(model):
    settings = _settings(model)
    assert set(settings) == {name for name, p in model.named_parameters() if p.requires_grad}
    assert {lr for lr, _ in settings.values()} == {1e-4}
    assert settings["distilbert.transformer.layer.1.ffn.lin1.weight"][1] == 0.01
    assert settings["distilbert.transformer.layer.1.ffn.lin1.bias"][1] == 0.0
    assert settings["distilbert.transformer.layer.1.output_layer_norm.weight"][1] == 0.0
    assert settings["distilbert.embeddings.LayerNorm.weight"][1] == 0.0


def test_head_rate_and_layer_decay(model):
    settings = _settings(model, head_learning_rate=2e-3, layer_lr_decay=0.5)
    # The head is everything outside model.base_model_prefix ("distilbert").
    for name in ("pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"):
        assert settings[name][0] == 2e-3
    # Two layers: the top one at the base rate, the one below at half, the embeddings below that at a quarter.
    assert settings["distilbert.transformer.layer.1.attention.q_lin.weight"][0] == pytest.approx(1e-4)
    assert settings["distilbert.transformer.layer.0.attention.q_lin.weight"][0] == pytest.approx(5e-5)
    assert settings["distilbert.embeddings.word_embeddings.weight"][0] == pytest.approx(2.5e-5)


def test_optimizer_groups_carry_each_rate_and_the_scheduler_scales_them_together(model):
    config = TrainConfig(model_name_or_path="unused", dataset="unused", learning_rate=1e-4, head_learning_rate=1e-3,
                         layer_lr_decay=0.5)
    optimizer = build_optimizer(model, config, fused=False)
    grouped = sum(len(group["params"]) for group in optimizer.param_groups)
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)
    assert sorted({group["lr"] for group in optimizer.param_groups}) == pytest.approx([2.5e-5, 5e-5, 1e-4, 1e-3])
    from transformers import get_scheduler

    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates == pytest.approx([0.5 * lr for lr in (2.5e-5, 5e-5, 1e-4, 1e-3)])
    assert all(isinstance(p, torch.nn.Parameter) for group in optimizer.param_groups for p in group["params"])


def test_a_bert_pooler_trains_with_the_head():
    """BERT keeps the head's first layer (the pooler) inside the base model; it takes the head's rate."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=4)
    settings = _settings(BertForSequenceClassification(config), head_learning_rate=1e-3, layer_lr_decay=0.5)
    assert settings["bert.pooler.dense.weight"][0] == settings["classifier.weight"][0] == 1e-3
    assert settings["bert.encoder.layer.1.output.dense.weight"][0] == pytest.approx(1e-4)
    assert settings["bert.embeddings.word_embeddings.weight"][0] == pytest.approx(2.5e-5)
