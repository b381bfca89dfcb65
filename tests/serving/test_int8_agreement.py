"""QUANTIZE=auto serves the int8 graph wherever ONNX Runtime is installed, once the graph has passed the agreement
check against its fp32 model; a graph that decides otherwise is served only when asked for by name (int8). The
graph shipped with a model (`distrinews export-onnx`) replaces only its own files in the model's onnx/ folder."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from distrinews.core.modeling import load_classifier
from distrinews.core.tasks import make_task
from distrinews.serving.agreement import PROBE_TEXTS, measure_agreement
from distrinews.serving.backends import resolve_quantization
from distrinews.serving.service import ClassifierService, ServingConfig
from space_support import space_env, write_space_model


def test_auto_is_int8_wherever_onnxruntime_is_installed():
    assert resolve_quantization("auto") == "int8"  # the suite's environment has onnxruntime, VNNI or not


def test_agreement_counts_clear_decisions_and_the_mean_difference():
    task = make_task("single_label_classification", ["a", "b", "c"])
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 4.0]])
    batch = {"input_ids": np.zeros((4, 2), dtype=np.int64)}
    same = measure_agreement(lambda b: logits, lambda b: logits + 1e-4, batch, task)
    assert (same.probes, same.clear, same.same) == (4, 3, 3) and same.mean_difference < 1e-4 and same.holds
    flipped = logits[:, [1, 0, 2]]  # the first two decisions swap places
    other = measure_agreement(lambda b: logits, lambda b: flipped, batch, task)
    assert (other.clear, other.same) == (3, 1) and not other.holds
    assert "int8 decides as fp32 on 1 of the 3 probe texts fp32 decides clearly" in str(other)
    multi = make_task("multi_label_classification", ["a", "b"], threshold=0.5)
    both = np.array([[3.0, -3.0], [0.05, 3.0]])  # the second row's first label sits on the threshold: not clear
    result = measure_agreement(lambda b: both, lambda b: -both, {"input_ids": np.zeros((2, 1))}, multi)
    assert (result.clear, result.same) == (1, 0) and not result.holds


@pytest.fixture(scope="module")
def int8_breaks_this_model(tmp_path_factory):
    """A model whose fp32 decisions live in small head weights that per-tensor int8 rounds to zero: one huge
    weight in the pre-classifier sets the scale, the classifier ignores that unit and amplifies the others."""
    import torch

    folder = write_space_model(tmp_path_factory.mktemp("outlier-model"))
    model, tokenizer = load_classifier(str(folder))
    with torch.no_grad():
        model.pre_classifier.weight[0, 0] = 1e4
        model.classifier.weight[:, 0] = 0
        model.classifier.weight.mul_(300)
        model.classifier.bias.zero_()
    model.save_pretrained(folder)
    return folder


def _load(model_dir, cache_dir, quantize: str) -> ClassifierService:
    return ClassifierService.load(ServingConfig.from_env(space_env(str(model_dir), cache_dir, QUANTIZE=quantize)))


def test_auto_serves_fp32_when_the_graph_decides_otherwise_and_caches_nothing(int8_breaks_this_model, tmp_path,
                                                                               caplog):
    with caplog.at_level(logging.WARNING, logger="distrinews.serving.backends"):
        service = _load(int8_breaks_this_model, tmp_path / "onnx", "auto")
    assert service.quantization == "none"
    (warning,) = [r.getMessage() for r in caplog.records if "QUANTIZE=auto serves fp32 torch" in r.getMessage()]
    assert "fails the agreement check: int8 decides as fp32 on" in warning and f"over {len(PROBE_TEXTS)} probes" in warning
    assert not list((tmp_path / "onnx").rglob("*.onnx"))  # a restart checks again rather than trusting a bad graph
    assert len(service.predict_now(["stocks rally", "striker scores"])) == 2


def test_int8_by_name_serves_the_graph_with_a_warning(int8_breaks_this_model, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="distrinews.serving"):  # the check is the export's, in export.py
        service = _load(int8_breaks_this_model, tmp_path / "onnx", "int8")
    assert service.quantization == "int8"
    assert any("QUANTIZE=int8 serves the int8 graph although it fails the agreement check" in r.getMessage()
               for r in caplog.records)


def test_auto_serves_and_caches_a_graph_that_agrees(space_model, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="distrinews.serving"):
        service = _load(space_model, tmp_path / "onnx", "auto")
    assert service.quantization == "int8"
    assert any(r.getMessage().startswith("int8 graph checked: int8 decides as fp32") for r in caplog.records)
    assert list((tmp_path / "onnx").rglob("model.int8.onnx"))


def test_a_graph_that_decides_otherwise_is_not_shipped(int8_breaks_this_model, tmp_path):
    """A Space serves a shipped graph under auto without checking it again, so push and export-onnx check it."""
    from distrinews.hub.push import ship_serving_graph
    from distrinews.serving.export import SHIPPED_GRAPH, Int8Disagreement, write_shipped_graph

    folder = tmp_path / "model"
    shutil.copytree(int8_breaks_this_model, folder)
    model, tokenizer = load_classifier(str(folder))
    with pytest.raises(Int8Disagreement, match="fails the agreement check: int8 decides as fp32 on"):
        write_shipped_graph(model, folder, tokenizer)
    assert not (folder / SHIPPED_GRAPH).parent.exists()  # nothing half-written
    said = []
    assert ship_serving_graph(folder, said.append) is None
    assert said[-1].startswith("Warning: no int8 ONNX graph for the Space (Int8Disagreement: fails the agreement")


def test_export_onnx_replaces_only_its_own_files(space_model, tmp_path):
    """onnx/ is shared with other exports (transformers.js reads onnx/model.onnx and onnx/model_quantized.onnx):
    `distrinews export-onnx` replaces a stale graph of its own and its info file, and leaves every other file."""
    from distrinews.cli import main as cli_main
    from distrinews.serving.backends import OnnxInt8Backend
    from distrinews.serving.export import EXPORT_RECIPE, SHIPPED_GRAPH, SHIPPED_GRAPH_INFO, shipped_graph

    folder = shutil.copytree(space_model, tmp_path / "model")
    theirs = {"onnx/model.onnx": b"a transformers.js graph", "onnx/model_quantized.onnx": b"its int8 graph",
              "onnx/notes/README.md": b"how these were made"}
    stale = {SHIPPED_GRAPH: b"a graph of other weights", SHIPPED_GRAPH_INFO: b'{"recipe": "an-older-recipe"}'}
    for name, data in {**theirs, **stale}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)

    assert cli_main(["export-onnx", str(folder)]) == 0
    assert {name: (folder / name).read_bytes() for name in theirs} == theirs
    assert shipped_graph(folder) == folder / SHIPPED_GRAPH
    assert json.loads((folder / SHIPPED_GRAPH_INFO).read_text())["recipe"] == EXPORT_RECIPE
    assert OnnxInt8Backend(folder / SHIPPED_GRAPH).input_names  # a real graph replaced the stale bytes
    files = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert files == {path.relative_to(space_model).as_posix() for path in space_model.rglob("*") if path.is_file()} \
        | set(theirs) | set(stale), "a staging file was left behind"
