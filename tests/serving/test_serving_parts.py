"""The serving building blocks on their own: the int8 ONNX backend and its cache, the micro-batcher (occlusion:
test_explain.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from distrinews.serving.backends import OnnxInt8Backend, resolve_quantization
from distrinews.serving.export import cache_folder_name, export_int8_onnx
from distrinews.core.errors import InferenceFailed, QueueFull, ServingConfigError
from distrinews.serving.batching import MicroBatcher
from distrinews.core.modeling import load_classifier
from distrinews.core.predict import encode_windows, length_sorted_chunks, pad_batch, torch_logits
from distrinews.core.windows import WindowPolicy, scores_from_logits
from distrinews.serving.service import ClassifierService, ServingConfig, texts_from_csv


def test_int8_onnx_export_agrees_with_fp32_on_padded_batches_and_is_cached(tiny_model, tmp_path):
    model, tokenizer = load_classifier(str(tiny_model))
    model.eval()
    path = export_int8_onnx(model, tmp_path, cache_folder_name(str(tiny_model), "local:abc"))
    backend = OnnxInt8Backend(path, threads=1)
    texts = ["the", "shares profit investors quarterly earnings merger", "nasa " * 40, "coach league"]
    windowed = encode_windows(tokenizer, texts, WindowPolicy(32, max_windows=1))
    ids, truncated = [t.windows[0] for t in windowed], [t.truncated for t in windowed]
    assert truncated == [False, False, True, False] and max(map(len, ids)) == 32
    assert ids == tokenizer(texts, truncation=True, max_length=32)["input_ids"]  # the Rust shortcut changes nothing
    batch = pad_batch(ids, tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (4, 32) and batch["attention_mask"].sum(1).tolist() == list(map(len, ids))
    fp32 = scores_from_logits(torch_logits(model)(batch), "softmax")
    int8 = scores_from_logits(backend.logits(batch), "softmax")
    assert int8.shape == (4, 4) and np.allclose(int8.sum(1), 1, atol=1e-5)
    assert np.abs(int8 - fp32).max() < 5e-3
    # Padding must not change a text's result (the mask was really exported, not traced away).
    alone = np.concatenate([scores_from_logits(backend.logits(pad_batch([row], tokenizer.pad_token_id)), "softmax")
                            for row in ids])
    assert np.abs(alone - int8).max() < 5e-3
    modified = path.stat().st_mtime_ns
    assert export_int8_onnx(model, tmp_path, cache_folder_name(str(tiny_model), "local:abc")) == path
    assert path.stat().st_mtime_ns == modified and not list(tmp_path.glob(".*"))  # reused; no staging left


def test_length_sorted_chunks_cover_every_text_once_with_little_padding():
    import random

    lengths = [random.Random(1).randint(5, 128) for _ in range(300)]
    chunks = length_sorted_chunks(lengths, max_rows=32)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(300))
    for chunk in chunks:
        sizes = [lengths[i] for i in chunk]
        assert len(chunk) <= 32 and sizes == sorted(sizes)
        assert len(chunk) * max(sizes) <= 1.25 * sum(sizes) + 1e-9
    assert length_sorted_chunks([7], 4) == [[0]] and length_sorted_chunks([], 4) == []
    assert length_sorted_chunks([10] * 9, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_quantization_choice_and_config_errors_name_the_variable():
    assert resolve_quantization("none") == "none" and resolve_quantization("int8") == "int8"
    assert resolve_quantization("auto") in ("none", "int8")
    with pytest.raises(ValueError, match="QUANTIZE must be one of"):
        resolve_quantization("fp16")
    with pytest.raises(ServingConfigError, match="MODEL_ID"):
        ServingConfig.from_env({})
    with pytest.raises(ServingConfigError, match="QUANTIZE='fp8'"):
        ServingConfig.from_env({"MODEL_ID": "a/b", "QUANTIZE": "fp8"})
    with pytest.raises(ServingConfigError, match="MAX_BATCH_SIZE='many'"):
        ServingConfig.from_env({"MODEL_ID": "a/b", "MAX_BATCH_SIZE": "many"})
    with pytest.raises(ServingConfigError, match="MAX_QUEUE"):
        ServingConfig.from_env({"MODEL_ID": "a/b", "MAX_QUEUE": "10"})
    config = ServingConfig.from_env({"MODEL_ID": "a/b", "BATCH_WAIT_MS": "3.5", "MAX_QUEUE": "100"})
    assert config.batch_wait_ms == 3.5 and config.max_queue == 100


def _echo_batches(log: list[int], delay: float = 0.02):
    def run_batch(texts):
        log.append(len(texts))
        time.sleep(delay)  # a model call: requests arriving meanwhile form the next batch
        return [f"<{text}>" for text in texts]
    return run_batch


def test_micro_batcher_batches_concurrent_requests_and_keeps_order():
    sizes: list[int] = []

    async def scenario():
        batcher = MicroBatcher(_echo_batches(sizes), max_batch_size=8, max_wait_ms=5, max_queue=200)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([f"{i}a", f"{i}b"]) for i in range(40)))
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario())
    assert results == [[f"<{i}a>", f"<{i}b>"] for i in range(40)]
    assert sum(sizes) == 80 == stats.items and max(sizes) == 8 and len(sizes) < 40


def test_micro_batcher_refuses_whole_requests_when_full_and_answers_every_accepted_one():
    async def scenario():
        batcher = MicroBatcher(_echo_batches([], delay=0.05), max_batch_size=4, max_wait_ms=0, max_queue=10)
        await batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit([f"{i}"] * 3) for i in range(12)), return_exceptions=True)
        await batcher.stop()
        return outcomes, batcher.stats

    outcomes, stats = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    answered = [o for o in outcomes if isinstance(o, list)]
    assert refused and answered and len(refused) + len(answered) == 12 == len(outcomes)
    assert all(o.retry_after_s >= 1 for o in refused) and stats.refused_requests == len(refused)
    assert all(len(o) == 3 for o in answered) and stats.items == 3 * len(answered)


def test_a_failing_batch_fails_only_its_own_callers():
    def run_batch(texts):
        if "bad" in texts:
            raise RuntimeError("model exploded")
        return [text.upper() for text in texts]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=1, max_wait_ms=0, max_queue=10)
        await batcher.start()
        outcomes = await asyncio.gather(batcher.submit(["ok"]), batcher.submit(["bad"]), batcher.submit(["fine"]),
                                        return_exceptions=True)
        await batcher.stop()
        return outcomes

    ok, bad, fine = asyncio.run(scenario())
    assert ok == ["OK"] and fine == ["FINE"] and isinstance(bad, InferenceFailed) and "exploded" in str(bad.error)


def test_a_batch_that_fails_is_rerun_one_text_at_a_time_so_only_the_culprit_fails():
    calls = []

    def run_batch(texts):
        calls.append(list(texts))
        if "poison" in texts:
            raise TypeError("tokenizer refused the batch")
        return [text.upper() for text in texts]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=8, max_wait_ms=50, max_queue=64)
        await batcher.start()
        await batcher.submit(["warm", "up"])  # after a batch of two, the next one waits for company
        outcomes = await asyncio.gather(*(batcher.submit([text]) for text in ["a", "b", "poison", "c"]),
                                        batcher.submit(["d", "poison", "e"]), return_exceptions=True)
        await batcher.stop()
        return outcomes, batcher.stats

    outcomes, stats = asyncio.run(scenario())
    assert outcomes[:2] == [["A"], ["B"]] and outcomes[3] == ["C"]
    for failed, index in ((outcomes[2], 0), (outcomes[4], 1)):
        assert isinstance(failed, InferenceFailed) and failed.indices == [index] and "refused" in str(failed.error)
        assert "refused" not in str(failed)  # the model's own text is for the log, not the caller
    assert any(len(call) > 1 and "poison" in call for call in calls)  # they did share a batch
    assert stats.isolated_batches >= 1 and stats.failed_items == 2


def test_inference_runs_off_the_event_loop_in_one_thread():
    threads = set()

    def run_batch(texts):
        threads.add(threading.current_thread().name)
        return texts

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=2, max_wait_ms=0, max_queue=10)
        await batcher.start()
        await asyncio.gather(*(batcher.submit([str(i)]) for i in range(6)))
        await batcher.stop()

    asyncio.run(scenario())
    assert len(threads) == 1 and threads.pop().startswith("inference")


def test_a_lone_text_runs_on_the_event_loop_and_a_text_with_others_waiting_does_not():
    threads = []

    def run_batch(texts):
        threads.append((texts[0], threading.current_thread().name))
        return texts

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch_size=1, max_wait_ms=0, max_queue=10)
        await batcher.start()
        await batcher.submit(["alone"])
        await asyncio.gather(*(batcher.submit([str(i)]) for i in range(3)))
        await batcher.stop()

    asyncio.run(scenario())
    loop_thread = threading.current_thread().name
    # "0" and "1" had company in the queue; "2" was the last one, alone again.
    assert [text for text, _ in threads] == ["alone", "0", "1", "2"]
    assert [name == loop_thread for _, name in threads] == [True, False, False, True]
    assert all(name.startswith("inference") for _, name in threads[1:3])


def test_lanes_run_batches_side_by_side_each_in_its_own_thread():
    started = {"a": threading.Event(), "b": threading.Event()}
    overlapped, threads = [], set()

    def lane(name, other):
        def run_batch(items):
            threads.add(threading.current_thread().name)
            started[name].set()
            overlapped.append(started[other].wait(timeout=10))  # only if the other lane runs meanwhile
            return [f"{name}:{item}" for item in items]
        return run_batch

    async def scenario():
        batcher = MicroBatcher(lane("a", "b"), lanes=[lane("a", "b"), lane("b", "a")], max_batch_size=8,
                               max_wait_ms=0, max_queue=64)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([i]) for i in range(8))), batcher.stats
        finally:
            await batcher.stop()

    results, stats = asyncio.run(scenario())
    assert sorted(int(r[0].split(":")[1]) for r in results) == list(range(8))  # each answered once, its own
    assert all(r[0].endswith(f":{i}") for i, r in enumerate(results))
    assert overlapped and all(overlapped) and threads == {"inference-0_0", "inference-1_0"}
    assert stats.items == 8 and stats.largest_batch <= 4  # the idle lanes shared the queue


def test_a_lone_item_takes_the_event_loop_only_when_every_lane_is_idle():
    ran, hold = [], threading.Event()

    def in_a_lane(items):
        ran.append((items[0], "lane"))
        if items == ["hold"]:
            hold.wait(timeout=10)
        return items

    def alone(items):
        ran.append((items[0], "loop"))
        return items

    async def scenario():
        batcher = MicroBatcher(in_a_lane, lanes=[in_a_lane, in_a_lane], run_alone=alone, max_batch_size=4,
                               max_wait_ms=0, max_queue=10)
        await batcher.start()
        try:
            held = asyncio.create_task(batcher.submit(["hold", "x"]))  # one item to each lane
            while ("x", "lane") not in ran:
                await asyncio.sleep(0.005)
            await batcher.submit(["c"])  # alone in the queue, but a lane is busy: the other lane runs it
            hold.set()
            await held
            await batcher.submit(["d"])  # alone at an idle server: on the event loop
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert dict(ran) == {"hold": "lane", "x": "lane", "c": "lane", "d": "loop"}


@pytest.mark.parametrize("lengths, grouped", [
    ([1, 9, 1, 9, 1, 9, 1, 9], [[1, 1, 1, 1], [9, 9, 9, 9]]),
    ([9, 1, 1, 1, 1, 9, 9, 9], [[9, 9, 9, 9], [1, 1, 1, 1]]),  # the first in turn is never passed over
])
def test_batches_group_items_of_like_size_and_keep_the_first_in_turn(lengths, grouped):
    def batches_for(size_of):
        batches = []

        def run_batch(items):
            batches.append(sorted(map(len, items)))
            return items

        async def scenario():
            batcher = MicroBatcher(run_batch, max_batch_size=4, max_wait_ms=0, max_queue=64, size_of=size_of)
            await batcher.start()
            try:
                texts = ["x" * n for n in lengths]
                assert await asyncio.gather(*(batcher.submit([t]) for t in texts)) == [[t] for t in texts]
            finally:
                await batcher.stop()

        asyncio.run(scenario())
        return batches

    assert batches_for(len) == grouped
    assert batches_for(None) == [sorted(lengths[:4]), sorted(lengths[4:])]  # round-robin order only


def test_texts_from_csv_reads_a_text_column_or_the_ag_news_layout(tmp_path):
    (tmp_path / "text.csv").write_text("id,text\n1,Stocks rally\n2,  \n3,\"Team wins, again\"\n")
    (tmp_path / "ag.csv").write_text('"3","Oil up","Prices rose."\n"2","Cup final","A late goal."\n')
    (tmp_path / "plain.csv").write_text("first headline\nsecond headline\n")
    assert texts_from_csv(tmp_path / "text.csv", 10) == ["Stocks rally", "Team wins, again"]
    assert texts_from_csv(tmp_path / "ag.csv", 10) == ["Oil up Prices rose.", "Cup final A late goal."]
    assert texts_from_csv(tmp_path / "plain.csv", 10) == ["first headline", "second headline"]
    with pytest.raises(ValueError, match="at most 1"):
        texts_from_csv(tmp_path / "plain.csv", 1)


class _Slowed:
    """A served session that answers after an extra delay: a CPU on which it would be the slower choice."""

    def __init__(self, backend, seconds: float):
        self.backend, self.seconds = backend, seconds
        self.threads, self.quantization = backend.threads, backend.quantization

    def logits(self, batch):
        time.sleep(self.seconds)
        return self.backend.logits(batch)


@pytest.mark.parametrize("slowed", ["every core's", "a lane's"])
def test_a_lone_request_takes_the_session_that_answered_a_headline_faster_at_start(shipped_space_model, tmp_path,
                                                                                   slowed):
    config = ServingConfig(model_id=str(shipped_space_model), quantize="int8", onnx_cache_dir=str(tmp_path / "onnx"),
                           threads=2, lanes=2)
    service = ClassifierService.load(config)
    assert {service.backend.threads, service.lanes[0].threads} == {2, 1}
    assert set(service.lone_timings_ms) == {"2 threads", "1 threads"}  # measured when it loaded
    if slowed == "every core's":
        service.backend = _Slowed(service.backend, 0.01)
    else:
        service.lanes[0] = _Slowed(service.lanes[0], 0.01)
    service.choose_lone_backend(runs=3, idle_s=0)
    expected = 1 if slowed == "every core's" else 2
    assert service.info()["lone_request_threads"] == expected
    assert service.lone_timings_ms[f"{3 - expected} threads"] > 10  # the slowed one, with its delay

    async def lone_request():  # the batcher runs a lone request on the chosen session
        await service.start()
        try:
            return await service.predict(["Stocks rally as the central bank holds interest rates"])
        finally:
            await service.stop()

    calls = []
    chosen = service.lone_backend
    original = chosen.logits
    chosen.logits = lambda batch: calls.append(len(batch["input_ids"])) or original(batch)
    assert len(asyncio.run(lone_request())) == 1 and calls == [1]
