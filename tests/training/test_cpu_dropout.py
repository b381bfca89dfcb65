"""CPU dropout from 16-bit random numbers: the right drop rate, unbiased, seeded, and only where it applies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distrinews.training.cpu_dropout import CPUDropout, keep_mask, use_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    keep, scale = keep_mask(torch.Size([1000, 1003]), p)  # an element count that is not a multiple of 4
    assert keep.shape == (1000, 1003) and keep.dtype == torch.bool
    dropped = 1 - keep.float().mean().item()
    assert abs(dropped - p) < 0.002  # about 5 standard deviations on 1e6 draws
    assert scale == pytest.approx(1 / (1 - round(p * 65536) / 65536))


def test_every_quarter_of_a_word_is_uniform():
    """Each int64 draw is cut into four 16-bit numbers; none of the four may be biased (e.g. a clear sign bit)."""
    torch.manual_seed(0)
    keep, _ = keep_mask(torch.Size([400_000]), 0.5)
    per_quarter = keep.view(-1, 4).float().mean(dim=0)
    assert torch.all((per_quarter - 0.5).abs() < 0.005), per_quarter


def test_output_is_unbiased_and_zero_where_dropped():
    torch.manual_seed(0)
    layer = CPUDropout(0.2).train()
    x = torch.rand(200, 500) + 0.5
    y = layer(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] * (65536 / (65536 - round(0.2 * 65536))))
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.01)


def test_gradient_flows_through_kept_elements_only():
    torch.manual_seed(0)
    x = torch.randn(64, 64, requires_grad=True)
    y = CPUDropout(0.3).train()(x)
    y.sum().backward()
    scale = 65536 / (65536 - round(0.3 * 65536))
    expected = torch.where(y.detach() != 0, torch.full_like(x, scale), torch.zeros_like(x))
    assert torch.allclose(x.grad, expected)


def test_seeded_like_torch_dropout():
    torch.manual_seed(3)
    first = CPUDropout(0.1).train()(torch.ones(1000))
    torch.manual_seed(3)
    again = CPUDropout(0.1).train()(torch.ones(1000))
    other = CPUDropout(0.1).train()(torch.ones(1000))  # the generator moved on
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bf16_input_keeps_its_dtype():
    y = CPUDropout(0.1).train()(torch.ones(16, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_eval_and_zero_p_are_identity_and_p1_drops_all():
    x = torch.randn(8, 8)
    assert torch.equal(CPUDropout(0.5).eval()(x), x)
    assert torch.equal(CPUDropout(0.0).train()(x), x)
    assert torch.count_nonzero(CPUDropout(1.0).train()(x)) == 0
    for p in (1e-6, 1 - 1e-6):  # no 16-bit rate expresses these: torch's own dropout, not a 1/0 scale
        torch.manual_seed(0)
        ours = CPUDropout(p).train()(x)
        torch.manual_seed(0)
        assert torch.equal(ours, torch.nn.functional.dropout(x, p))


def test_swap_keeps_state_and_skips_dropout_subclasses():
    class MyDropout(nn.Dropout):  # a subclass may change what dropout means: left alone
        pass

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), MyDropout(0.2), nn.Sequential(nn.Dropout(0.3)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_cpu_dropout(model) == "2 dropout module(s)"
    assert type(model[1]) is CPUDropout and model[1].p == 0.1
    assert type(model[2]) is MyDropout
    assert type(model[3][0]) is CPUDropout and model[3][0].p == 0.3
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert use_cpu_dropout(model) == "nothing"  # already swapped


# ----------------------------------------------------------------------------- attention probabilities

def _bert(attn_implementation="sdpa", **overrides):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=4, **overrides)
    model = BertForSequenceClassification(config)
    model.set_attn_implementation(attn_implementation)
    return model


def _gpt2():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32, num_labels=4, pad_token_id=0)
    model = GPT2ForSequenceClassification(config)
    model.set_attn_implementation("sdpa")
    return model


def _batch():
    ids = torch.randint(5, 50, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("build", [_bert, _gpt2], ids=["bert-bidirectional", "gpt2-causal"])
def test_attention_path_equals_sdpa_with_the_same_masks(build, monkeypatch):
    """With masks that keep everything, the explicit path must give the sdpa implementation's logits and gradients."""
    import distrinews.training.cpu_dropout as cpu_dropout

    reference, model = build(), build()
    assert use_cpu_dropout(model).endswith(", attention probabilities")
    for module in reference.modules():  # the reference: sdpa without dropout, what all-keep masks must give
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    calls = []
    monkeypatch.setattr(cpu_dropout, "keep_mask",
                        lambda shape, p: calls.append(shape) or (torch.ones(shape, dtype=torch.bool), 1.0))
    batch = _batch()
    outputs = [m.train()(**batch) for m in (reference, model)]
    assert sum(len(shape) == 4 for shape in calls) == 2  # the explicit attention path ran, once per layer
    assert torch.allclose(outputs[0].logits, outputs[1].logits, atol=1e-6)
    for output in outputs:
        output.loss.backward()
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_attention_dropout_is_real_and_evaluation_is_sdpa():
    model = _bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    reference = _bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    use_cpu_dropout(model)
    batch = _batch()
    torch.manual_seed(1)
    first = model.train()(**batch).logits
    second = model(**batch).logits
    assert not torch.allclose(first, second)  # masks differ between calls
    assert torch.equal(model.eval()(**batch).logits, reference.eval()(**batch).logits)


def test_saved_config_is_unchanged(tmp_path):
    import json

    model, reference = _bert(), _bert()
    use_cpu_dropout(model)
    model.save_pretrained(tmp_path / "swapped")
    reference.save_pretrained(tmp_path / "reference")
    assert (json.loads((tmp_path / "swapped" / "config.json").read_text())
            == json.loads((tmp_path / "reference" / "config.json").read_text()))


def test_eager_attention_is_left_alone():
    model = _bert(attn_implementation="eager")
    assert use_cpu_dropout(model) == "8 dropout module(s)"
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("cpu_dropout_masks", ["true", "false"], ids=["cpu-dropout-masks", "torch-dropout"])
def test_resumed_run_repeats_the_masks(cpu_dropout_masks, tiny_model, ag_news_dir, tmp_path, capsys):
    """Dropout masks come from the RNG state that checkpoints save: a resumed run ends on the same weights."""
    import json
    import shutil

    from safetensors.torch import load_file

    from conftest import tiny_train_args
    from distrinews.training.loop import main as train_main

    model = tmp_path / "tiny-with-dropout"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config.update(dropout=0.2, attention_dropout=0.2)
    (model / "config.json").write_text(json.dumps(config))
    run = dict(num_train_epochs=1, per_device_train_batch_size=16, checkpoint_every=4, keep_last=20,
               validation_fraction=0, cpu_dropout_masks=cpu_dropout_masks)
    assert train_main(tiny_train_args(model, ag_news_dir, tmp_path / "whole", **run)) == 0
    # Equal weights would prove nothing without dropout: the run trained with it, through the masks asked for.
    saved = json.loads((tmp_path / "whole" / "model" / "config.json").read_text())
    assert saved["dropout"] == saved["attention_dropout"] == 0.2
    swapped = "CPU dropout masks from 16-bit random numbers: 6 dropout module(s), attention probabilities"
    assert (swapped in capsys.readouterr().out) == (cpu_dropout_masks == "true")
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-00000008", resumed / "checkpoints" / "step-00000008")
    assert train_main(tiny_train_args(model, ag_news_dir, resumed, **run)) == 0
    whole, again = (load_file(folder / "model" / "model.safetensors") for folder in (tmp_path / "whole", resumed))
    assert all(torch.equal(whole[name], again[name]) for name in whole)
    log = (tmp_path / "whole" / "log.jsonl").read_text()
    assert json.loads(log.splitlines()[0])["loss"] > 0  # it trained, with dropout on
