"""The CPU cost estimate `distrinews launch` prints: FLOPs from the model at the data's token count, over this
machine's own matmul rate."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, DistilBertConfig

from distrinews.core.machine import Precision, cpu_bf16_units, measure_matmul_flops
from distrinews.launch.estimate import (CPU_SHARE_OF_PEAK, QUICK_RUN_FLAGS, describe_cpu_cost, estimate_cpu_run,
                                        share_of_peak, training_flops_per_token)
from distrinews.training.config import TrainConfig

FP32, BF16 = Precision("no", "test"), Precision("bf16", "test")


@pytest.fixture(scope="module")
def distilbert_base():
    with torch.device("meta"):  # the architecture of distilbert-base-uncased, without allocating its weights
        return AutoModelForSequenceClassification.from_config(DistilBertConfig(num_labels=4))


def test_distilbert_costs_what_its_size_says(distilbert_base):
    # 66,956,548 parameters with the 4-class head, 23,834,112 of them token and position embeddings (a lookup,
    # no multiply): 6 FLOPs per other weight and token, plus attention (12 x 6 layers x 768 x 52 tokens).
    assert sum(parameter.numel() for parameter in distilbert_base.parameters()) == 66_956_548
    per_token = training_flops_per_token(distilbert_base, tokens_per_example=52)
    assert per_token == 6 * (66_956_548 - 23_834_112) + 12 * 6 * 768 * 52
    assert training_flops_per_token(distilbert_base, 128) > per_token  # attention grows with the length


def test_the_estimate_counts_steps_evaluations_and_the_measured_rate(distilbert_base):
    config = TrainConfig(num_train_epochs=3, per_device_train_batch_size=32, validation_fraction=0.05)
    per_example = 52 * training_flops_per_token(distilbert_base, 52)
    run = estimate_cpu_run(config, 2, distilbert_base, 52, 114_000, {"validation": 6000, "test": 7600}, 200e9)
    assert run.examples == config.total_steps(114_000, 2) * 64  # every step's global batch, whole epochs only
    evaluations = 6000 * 4 + 7600  # validation at 3 epoch ends and at the end, test once; a forward pass each
    assert run.flops == pytest.approx((run.examples + evaluations / 3) * per_example)
    assert run.seconds == pytest.approx(run.flops / (200e9 * CPU_SHARE_OF_PEAK["fp32"]))
    assert 15 * 3600 < run.seconds < 20 * 3600  # distilbert-base on AG News on 2 cores at 200 GFLOP/s: a night


def test_the_share_of_peak_follows_the_precision_and_the_unit_computing_it():
    assert share_of_peak(FP32, []) == (CPU_SHARE_OF_PEAK["fp32"], "fp32")
    assert share_of_peak(FP32, ["AVX512_BF16"]) == (CPU_SHARE_OF_PEAK["fp32"], "fp32")
    assert share_of_peak(BF16, ["AVX512_BF16"]) == (CPU_SHARE_OF_PEAK["AVX512_BF16"], "bf16")
    assert share_of_peak(BF16, ["AMX_BF16", "AVX512_BF16"]) == (CPU_SHARE_OF_PEAK["AMX_BF16"], "bf16")
    # bf16 asked for on a CPU that only emulates it: its fp32 rate is the honest one to count with
    assert share_of_peak(BF16, []) == (CPU_SHARE_OF_PEAK["fp32"], "fp32")


@pytest.mark.parametrize("precision", [FP32, BF16], ids=["fp32", "bf16"])
def test_the_message_names_the_rate_of_the_runs_precision_and_the_quick_run(distilbert_base, precision):
    message = describe_cpu_cost(TrainConfig(), 2, precision, distilbert_base, 52, 114_000,
                                {"validation": 6000, "test": 7600})
    _, dtype_name = share_of_peak(precision, cpu_bf16_units())
    assert f"GFLOP/s its {dtype_name} matmuls reach here" in message
    assert message.startswith("estimate: distilbert-base-uncased on 341,952 training examples (3 epochs, with its "
                              "evaluations) takes about ")
    assert f"For a quick run add {QUICK_RUN_FLAGS} (about " in message
    assert QUICK_RUN_FLAGS == "--max_train_samples 2000 --max_eval_samples 500 --num_train_epochs 1"


def test_the_matmul_rate_is_measured_here():
    assert 1e7 < measure_matmul_flops(seconds=0.1, size=256) < 1e14  # wide: the suite's other workers share it
