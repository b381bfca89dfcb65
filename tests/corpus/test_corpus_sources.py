"""A corpus read as the Space reads a request: long texts in the same windows, odd texts cleaned the same way, the
same answers; and a Hub dataset streamed from a local Hub mirror."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ODD_TEXTS, REPO_ROOT, ag_news_rows

from distrinews.core.texts import clean_text

LONG = [" ".join(f"{title} {description}" for _, title, description in ag_news_rows(count, seed))
        for count, seed in ((12, 1), (40, 2), (3, 3))]
TEXTS = [*LONG, *(text for text in ODD_TEXTS if clean_text(text[:100_000])), "x" * 150_000]


@pytest.fixture(scope="module")
def served(shipped_space_model, tmp_path_factory):
    """(the Space's service, the corpus model) on the same model, fp32 torch and int8."""
    from distrinews.corpus.engine import CorpusModel, EngineOptions
    from distrinews.serving.service import ClassifierService, ServingConfig

    cache = str(tmp_path_factory.mktemp("onnx-cache"))
    os.environ["ONNX_CACHE_DIR"] = cache
    models = {}
    for backend, quantize in (("torch", "none"), ("int8", "int8")):
        space = ClassifierService.load(ServingConfig(model_id=str(shipped_space_model), quantize=quantize,
                                                     onnx_cache_dir=cache))
        corpus = CorpusModel.load(EngineOptions(model=str(shipped_space_model), backend=backend))
        models[backend] = (space, corpus)
    yield models
    for _, corpus in models.values():
        corpus.close()
    del os.environ["ONNX_CACHE_DIR"]


def space_answers(space, texts):
    async def ask():
        await space.start()
        try:
            return await space.predict(texts, max_windows=10_000)
        finally:
            await space.stop()

    return asyncio.run(ask())


def test_long_and_odd_texts_get_the_spaces_answers(served):
    space, corpus = served["torch"]
    answers, predictions = space_answers(space, TEXTS), corpus.predict(TEXTS)
    assert [p.windows for p in predictions] == [a.windows for a in answers]
    assert max(p.windows for p in predictions) > 3
    assert [p.truncated for p in predictions] == [a.truncated for a in answers]
    assert predictions[-1].truncated  # cut at MAX_TEXT_CHARS, as the Space cuts it
    assert [p.labels for p in predictions] == [a.labels for a in answers]
    for prediction, answer in zip(predictions, answers):  # fp32 in other batches: equal to rounding
        np.testing.assert_allclose(list(prediction.probabilities.values()), list(answer.probabilities.values()),
                                   rtol=0, atol=1e-6)


def test_int8_answers_equal_the_spaces_lane_for_a_text_alone(served):
    """int8 scales each batch's activations by its own range: a text alone in both paths is in the same batches,
    so its answer is the same to the last bit."""
    space, corpus = served["int8"]
    for text in TEXTS:
        (prediction,) = corpus.predict([text])
        (answer,) = space.predict_now([text], space.lanes[0])
        assert prediction.probabilities == answer.probabilities and prediction.windows == answer.windows


HUB_CARD = """---
configs:
- config_name: topics
  data_files:
  - split: test
    path: topics/test-*.parquet
---
# News topics
"""


def test_a_hub_dataset_split_is_streamed_from_the_hub(shipped_space_model, tmp_path):
    from hub_mirror import HubMirror

    rows = ag_news_rows(40, seed=9)
    repo = tmp_path / "repo"
    (repo / "topics").mkdir(parents=True)
    frame = pd.DataFrame({"title": [title for _, title, _ in rows], "content": [text for _, _, text in rows],
                          "key": [f"n{i}" for i in range(len(rows))]})
    frame.to_parquet(repo / "topics" / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text(HUB_CARD)
    output = tmp_path / "labels.parquet"
    with HubMirror(tmp_path / "mirror") as mirror:
        sha = mirror.commit("someone/news", repo, "Add the test split", repo_type="dataset")
        env = {**os.environ, **mirror.client_env(tmp_path / "hf-home"), "HF_DATASETS_OFFLINE": "0",
               "ONNX_CACHE_DIR": str(tmp_path / "onnx-cache")}
        command = [sys.executable, "-m", "distrinews", "predict", "--model", str(shipped_space_model), "--input",
                   "someone/news", "--dataset_config_name", "topics", "--split", "test", "--dataset_revision", sha,
                   "--text_column_names", "title,content", "--id_column", "key", "--output", str(output), "--quiet",
                   "--shard_size", "16"]
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    table = pd.read_parquet(output)
    assert list(table["key"]) == list(frame["key"]) and list(table["row"]) == list(range(len(rows)))
    assert "dataset 'someone/news' split 'test'" in result.stdout and "40 rows, 40 classified" in result.stdout
