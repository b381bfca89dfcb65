"""R-Drop: the loss against a from-scratch computation, what each part of it does, and a real training run."""

from __future__ import annotations

import json

import pytest
import torch

from distrinews.core.tasks import SingleLabelTask
from distrinews.training.rdrop import rdrop_loss

TASK = SingleLabelTask(("a", "b", "c", "d"))


def _bert(dropout: float):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=4,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config).train()


def _batch():
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 5:] = 0
    return dict(input_ids=torch.randint(5, 50, (4, 9), generator=generator), attention_mask=mask), \
        torch.tensor([0, 1, 2, 3])


def test_loss_is_cross_entropy_of_both_passes_plus_weighted_symmetric_kl():
    model, (batch, labels) = _bert(dropout=0.3), _batch()
    torch.manual_seed(5)
    loss = rdrop_loss(model, batch, labels, 0.7, TASK)
    # The same two passes, written out: the doubled batch draws its masks in one forward, as rdrop_loss does.
    torch.manual_seed(5)
    logits = model(**{key: torch.cat([value, value]) for key, value in batch.items()}).logits
    p, q = logits[:4].softmax(-1), logits[4:].softmax(-1)
    cross_entropy = -(p[range(4), labels].log().mean() + q[range(4), labels].log().mean()) / 2
    kl_pq = (p * (p.log() - q.log())).sum(-1).mean()
    kl_qp = (q * (q.log() - p.log())).sum(-1).mean()
    assert torch.allclose(loss, cross_entropy + 0.7 * (kl_pq + kl_qp) / 2, atol=1e-6)
    assert not torch.allclose(p, q) and kl_pq > 0  # the two copies really got different dropout masks


def test_without_dropout_it_is_the_plain_loss_and_gradient():
    """Two identical passes: no disagreement to penalise, and cross-entropy over both equals one pass's."""
    model, (batch, labels) = _bert(dropout=0.0), _batch()
    rdrop_loss(model, batch, labels, 1.0, TASK).backward()
    rdrop_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = model(**batch, labels=labels).loss  # the model's own cross-entropy
    plain.backward()
    assert torch.allclose(rdrop_loss(model, batch, labels, 1.0, TASK), plain, atol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(rdrop_grads, model.parameters()))


def test_the_kl_term_scales_with_the_weight():
    model, (batch, labels) = _bert(dropout=0.3), _batch()

    def loss(weight):
        torch.manual_seed(9)  # the same masks for every weight
        return rdrop_loss(model, batch, labels, weight, TASK)

    assert torch.allclose(loss(2.0) - loss(0.0), 2 * (loss(1.0) - loss(0.0)), atol=1e-6)
    assert loss(1.0) > loss(0.0)


@pytest.mark.parametrize("bad", ["-1", "nan", "inf"])
def test_bad_weight_is_refused_by_name(bad):
    from distrinews.training.config import ConfigError, parse_train_config

    with pytest.raises(ConfigError, match="rdrop_weight"):
        parse_train_config(["--rdrop_weight", bad])


def test_training_with_rdrop_learns_and_is_recorded(tiny_model, ag_news_dir, tmp_path, capsys):
    """A real run: it learns the tiny task, the model card states the weight, and a checkpoint of an R-Drop run
    is not resumed with another weight (the loss would change under the optimizer's feet)."""
    import shutil

    from conftest import tiny_train_args
    from distrinews.training.loop import main as train_main

    model = tmp_path / "tiny-with-dropout"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config.update(dropout=0.1, attention_dropout=0.1)
    (model / "config.json").write_text(json.dumps(config))
    run = dict(num_train_epochs=3, rdrop_weight=1.0, validation_fraction=0, checkpoint_every=10)
    assert train_main(tiny_train_args(model, ag_news_dir, tmp_path / "run", **run)) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.6  # 4 classes: chance is 0.25
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "| R-Drop weight | 1.0 |" in card
    capsys.readouterr()
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "run" / "checkpoints", other / "checkpoints")
    assert train_main(tiny_train_args(model, ag_news_dir, other, **{**run, "rdrop_weight": 0.5})) == 2
    assert "rdrop_weight: checkpoint 1.0, this run 0.5" in capsys.readouterr().err
