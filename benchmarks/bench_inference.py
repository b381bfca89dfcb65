"""CPU inference benchmark, side by side in one run: transformers.pipeline, ONNX Runtime int8, and the Space.

    python benchmarks/bench_inference.py                                   # DistilBERT-base size, real AG News
    python benchmarks/bench_inference.py --accuracy-model runs/minilm/model # + accuracy on the full test split

What it measures, on real AG News test text (title + description, ../shared/data/ag_news/test.csv):

1. ``pipeline``: ``transformers.pipeline("text-classification")`` fp32, one text per call (how most people serve
   a model), and with ``batch_size=32`` for reference.
2. ``ort-int8``: the ONNX Runtime dynamic int8 recipe that ``optimum``'s ``ORTQuantizer`` (avx512_vnni, dynamic)
   applies: ``torch.onnx.export`` + ``onnxruntime.quantization.quantize_dynamic``, called in-process. optimum
   itself is not used here: ``optimum[onnxruntime]`` requires transformers 4, and DistriNews runs on
   transformers 5 (``--optimum-python`` adds it from a Python of its own). The Space's int8 export
   (``distrinews.serving.export``) quantizes the same way, from a model whose last layer computes only the position
   the head reads (``distrinews.serving.first_position``: same logits, less work).
3. ``space-fp32`` and ``space``: the app itself (``uvicorn app.app:app``) with QUANTIZE=none (fp32 torch) and
   QUANTIZE=auto (the int8 graph wherever ONNX Runtime is installed and the graph agrees with fp32, as a user's
   Space gets it; ``--space-quantize int8`` serves the graph unchecked), over HTTP on 127.0.0.1, so every number includes HTTP, JSON, validation and the
   micro-batcher. The int8 graph ships with the model first (``write_shipped_graph``, what
   ``distrinews push`` / ``export-onnx`` do), so ``space`` starts as a deployed Space does: from the shipped
   graph, without torch or transformers.
4. ``space-hf``: the same int8 server through its Hugging Face inference route (``POST /`` with ``{"inputs": ...}``,
   what ``InferenceClient`` and huggingface.js send), timed in the same rounds as ``/api/predict``: the two routes
   share the whole predict path, so they may differ only by their JSON.

Latency: single texts, one at a time, each after an idle pause (``--latency-idle-ms``, 100 by default: a lone
request at an idle server, as a Space's visitor or a remote client sends it), in ``--latency-rounds`` rounds (5
rounds of 100 texts by default) after one warm-up. Each path runs its texts in a block of its own, and the order
of the blocks rotates over the rounds: a path is never timed right after another, whose worker threads may still
spin or whose wake-ups changed the cores' state (one ONNX Runtime session measured 5 to 11 ms a headline
depending on the path timed just before it), and a busy minute of a shared machine falls on one round.
Each path's p50 and p99 are taken per round; the table gives the median over rounds with the [min, max] of the
rounds beside it, and the ratios between paths are taken per round too (median [min, max]): a busy minute
widens the spread instead of becoming the result. A block of ``GET /api/health`` calls to the ``space`` server
is timed the same way: the HTTP round trip with no model call, the part of the Space's latency that an
in-process call never pays.

Where a single request's time goes: every ``space`` request's ``Server-Timing`` header (queue: waiting for a
batch; batch: the batch's tokenization and model call; respond: building the response; handler: the whole route
handler), medians, plus what lies outside the handler (the round trip minus the handler: body parsing and
validation, HTTP, and this client). The first request after the server became ready is reported on its own
(the cold request). Beside them, in-process and on the same texts: the bare ``ort-int8`` path split into its
tokenizer call and ``session.run`` + softmax, and the Space's own stack without HTTP (its Rust ``Encoder`` and
``OnnxInt8Backend`` over the shipped graph, through ``predict_with`` as the batcher calls it) split into the
session and everything around it.

Cold start, ``--cold-starts`` repeats, the three taking turns in each: ``python -c "import gradio"`` (the floor:
the Space imports gradio); the Space, from ``uvicorn`` process start until ``GET /api/ready`` answers 200
(polled every 25 ms; a fresh empty ONNX cache, so only the shipped graph can serve); and the pipeline, a process
that imports transformers, builds ``pipeline("text-classification")`` and classifies one text, start to exit.
Medians with [min, max]. The files are in the OS page cache (the benchmark has just read them): this is a
process's cold start, not a cold disk's. Whether the Space process loaded torch is read from its memory map
(``/proc/PID/maps``: any ``libtorch`` library) once it is ready, and one separate process loads the service as
the app does and lists which heavy modules (torch, transformers, ...) it imported.

Throughput: 32 concurrent HTTP clients for the Space, texts/s; the paths take turns on slices of the texts. For
the in-process baselines "32 clients" is their one-text-per-call rate (a server calling the pipeline per
request cannot do better on 2 cores: calls would only contend), and "batch 32" is their rate on 32-text
batches, given for reference. The HTTP clients run on the same 2 cores as the server, so the Space's numbers
pay for their own load generator.

The latency model is DistilBERT-base (66M) built from ../shared/data/distilbert-base-uncased/config.json
with random weights and the real uncased tokenizer: no DistilBERT weights are available offline, and the compute
cost does not depend on the weight values. Its "agreement" is the share of identical argmax predictions between
fp32 and each int8 path on the same texts. Accuracy on the full 7,600-row test split needs a trained model:
pass ``--accuracy-model`` (e.g. MiniLM-L6 fine-tuned with ``python -m distrinews.train``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import json
import os
import platform
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SHARED = REPO_ROOT.parent / "shared" / "data"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# Pause between two paths' blocks of latency calls: longer than the worker threads of the path before may spin.
BLOCK_SETTLE_S = 0.3
# How often the cold-start probe asks the Space whether it is ready: the start-up time is known to +-25 ms, and
# a probe (a loopback connection and a 503) costs the starting server well under 1 ms of CPU each time.
READY_POLL_S = 0.025
# Imported by a Space only to export a graph or to serve fp32: the shipped-graph start must need none of them.
# Server-Timing stages of a Space request, then the round trip outside the handler and the whole round trip.
SPACE_STAGES = ("queue", "batch", "respond", "handler", "outside_handler", "total")
HEAVY_MODULES = ("torch", "transformers", "datasets", "accelerate", "matplotlib")
# The pipeline's cold start, as a user's script has it: import, build the pipeline, classify one text.
PIPELINE_COLD_START = """
import sys
from transformers import pipeline
classify = pipeline("text-classification", model=sys.argv[1], device=-1)
classify(sys.argv[2], truncation=True, max_length=128)
"""
# The Space's model loading, as app.app's lifespan does it, then which heavy modules that imported.
SPACE_IMPORTS = f"""
import json, sys
import app.app
from distrinews.serving.service import ClassifierService, ServingConfig
ClassifierService.load(ServingConfig.from_env())
print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))
"""


def read_ag_news(path: Path) -> tuple[list[str], list[int]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    texts = [f"{title} {description}".replace("\\", " ").strip() for _, title, description in rows]
    return texts, [int(label) - 1 for label, _, _ in rows]


def percentiles(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=100)
    return {"p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2)}


def median_spread(values: list[float], digits: int = 2) -> tuple[float, list[float]]:
    """The median and the [min, max] of per-round (or per-repeat) values."""
    return round(statistics.median(values), digits), [round(min(values), digits), round(max(values), digits)]


def server_timing(header: str) -> dict[str, float]:
    """``queue;dur=0.041, batch;dur=11.862;desc="1 texts", ...`` -> {"queue": 0.041, "batch": 11.862, ...} (ms)."""
    return {name: float(value) for name, value in re.findall(r"([\w-]+);dur=([\d.]+)", header)}


def http_status(port: int, path: str, timeout: float = 5) -> int | None:
    """The status code of ``GET path`` on loopback, None while nothing listens. A bare socket, not httpx: while
    the Space starts, the probe shares the 2 cores with it, and a new httpx client costs a few ms of CPU."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path.encode())
            with sock.makefile("rb") as reader:
                status = reader.readline().split()
    except OSError:
        return None
    return int(status[1]) if len(status) > 1 and status[1].isdigit() else None


def maps_libtorch(pid: int) -> bool | None:
    """Whether process ``pid`` has a torch shared library mapped (None where /proc is not readable)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def build_classifier(folder: Path, config_dir: Path) -> Path:
    """The architecture of ``config_dir`` (DistilBERT by default; any encoder, e.g. MiniLM's BERT) with random
    weights and a 4-label head, and its real tokenizer: speed does not depend on the weights' values."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir, num_labels=4, id2label=dict(enumerate(LABELS)),
                                        label2id={n: i for i, n in enumerate(LABELS)})
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(folder)
    return folder


def served_flops(config, tokens: float, attention: bool = True) -> float:
    """The arithmetic of one served text of ``tokens`` tokens (multiply-adds x 2): every layer over every position,
    except the last, whose queries, attention output and feed-forward run on the one position the head reads
    (``distrinews.serving.first_position``), plus the head. Paths that compute more (the pipeline) are charged
    the same useful work. Without ``attention``: the weights' matmuls alone (the scores' and values' left out)."""
    hidden = getattr(config, "dim", None) or config.hidden_size
    layers = getattr(config, "n_layers", None) or config.num_hidden_layers
    ffn = getattr(config, "hidden_dim", None) or config.intermediate_size
    full_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + attention * 2 * 2 * tokens * tokens * hidden
    last_layer = (2 * tokens * 2 * hidden * hidden + 2 * (2 * hidden * hidden + 2 * hidden * ffn)
                  + attention * 2 * 2 * tokens * hidden)
    head = 2 * hidden * hidden + 2 * hidden * len(config.id2label)
    return (layers - 1) * full_layer + last_layer + head


def measure_peaks(threads: int, folder: Path, seconds: float = 2.0) -> dict[str, float]:
    """This machine's matmul rate on ``threads`` threads, GFLOP/s: fp32 through torch, and int8 through ONNX
    Runtime with the served graph's recipe (``quantize_dynamic``: int8 weights, activations quantized per run),
    the better of one session over every thread and one single-thread session per thread side by side (the
    Space's lanes)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from distrinews.core.machine import measure_matmul_flops

    size = 1024
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "peak",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])], [weights])
    fp32_graph, int8_graph = folder / "peak.fp32.onnx", folder / "peak.int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32_graph))
    quantize_dynamic(str(fp32_graph), str(int8_graph), weight_type=QuantType.QInt8)
    inputs = {"X": np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)}

    def session(session_threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = session_threads
        return ort.InferenceSession(str(int8_graph), options, providers=["CPUExecutionProvider"])

    def side_by_side(sessions) -> float:
        runs = [0] * len(sessions)

        def keep_running(i: int, stop: float) -> None:
            sessions[i].run(None, inputs)  # warm-up, not counted
            started_at[i] = time.perf_counter()
            while time.perf_counter() < stop or runs[i] < 3:
                sessions[i].run(None, inputs)
                runs[i] += 1
            ended_at[i] = time.perf_counter()

        started_at, ended_at = [0.0] * len(sessions), [0.0] * len(sessions)
        workers = [threading.Thread(target=keep_running, args=(i, time.perf_counter() + seconds))
                   for i in range(len(sessions))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(n * 2 * size**3 / (end - start) for n, start, end in zip(runs, started_at, ended_at)) / 1e9

    int8 = max(side_by_side([session(threads)]), side_by_side([session(1) for _ in range(threads)]))
    return {"fp32": round(measure_matmul_flops(seconds=seconds, size=2048) / 1e9, 1), "int8": round(int8, 1)}


def _record(rounds: list[list[float]], call, text: str, round_: int) -> None:
    rounds[round_].append(call(text))


def _record_round_trip(round_trips: list[float], client, text: str, round_: int) -> None:
    started = time.perf_counter()
    client.health()
    round_trips.append(time.perf_counter() - started)


def plain_ort_int8(model, folder: Path):
    """optimum's dynamic-int8 recipe without optimum: export, quantize_dynamic (int8 weights), no fusion."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from distrinews.core.machine import usable_cores

    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 9:] = 0
    dynamic = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "logits": {0: "b"}}
    with torch.no_grad():
        torch.onnx.export(model.eval(), (ids, mask), str(folder / "plain.onnx"), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=dynamic)
    quantize_dynamic(str(folder / "plain.onnx"), str(folder / "plain.int8.onnx"), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    session = ort.InferenceSession(str(folder / "plain.int8.onnx"), options, providers=["CPUExecutionProvider"])

    def logits(batch):
        return session.run(["logits"], {name: batch[name] for name in ("input_ids", "attention_mask")})[0]

    return logits


class OptimumWorker:
    """``benchmarks/optimum_worker.py`` in a Python that has ``optimum[onnxruntime]`` (it needs transformers 4)."""

    def __init__(self, python: str, model_dir: Path, threads: int, log_path: Path):
        import subprocess

        self.log = log_path.open("w")
        self.process = subprocess.Popen([python, str(REPO_ROOT / "benchmarks" / "optimum_worker.py"), str(model_dir),
                                         str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True, bufsize=1)
        self.versions = self._reply()["versions"]

    def _reply(self) -> dict:
        for line in self.process.stdout:  # libraries may print to stdout too: take the first JSON object
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the optimum worker exited (code {self.process.wait()}); see {self.log.name}")

    def run(self, **request) -> tuple[float, list[str]]:
        """Seconds the pipeline call took (timed inside the worker) and the labels it gave."""
        self.process.stdin.write(json.dumps(request) + "\n")
        reply = self._reply()
        return reply["seconds"], reply["labels"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)
        self.log.close()


class SpaceServer:
    """``uvicorn app.app:app`` as a subprocess on a free loopback port."""

    def __init__(self, model: str, cache_dir: Path, log_path: Path, **settings: str):
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**os.environ, "MODEL_ID": model, "ONNX_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO_ROOT),
               "GRADIO_ANALYTICS_ENABLED": "False", **settings}
        self.log = log_path.open("w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.app:app", "--host", "127.0.0.1",
                                         "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
                                        cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_s: float | None = None  # process start to the first 200 from /api/ready

    def wait_ready(self, timeout: float = 900, poll_s: float = 0.5) -> dict:
        import httpx  # only for /api/info, once ready

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log.name}")
            if http_status(self.port, "/api/ready") == 200:
                self.ready_s = time.perf_counter() - self.started
                return httpx.get(self.url + "/api/info", timeout=5).json()
            time.sleep(poll_s)
        raise TimeoutError("server not ready")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output (the log goes with the work folder, so a failure shows it here)."""
        return Path(self.log.name).read_text(errors="replace")[-chars:]


def api_request(text: str) -> tuple[str, dict]:
    return "/api/predict", {"text": text}


def api_label(body) -> str:
    return body["predictions"][0]["label"]


def hf_request(text: str) -> tuple[str, dict]:
    return "/", {"inputs": text}


def hf_label(body) -> str:
    return body[0][0]["label"]


ROUTES = {"api": (api_request, api_label), "hf": (hf_request, hf_label)}


async def concurrent_clients(url: str, texts: list[str], clients: int,
                             route: str = "api") -> tuple[float, dict[int, int], list]:
    """``clients`` keep-alive connections posting one text each, back to back, until ``texts`` are done.
    aiohttp, not httpx: on 2 shared cores the load generator competes with the server, and httpx's async client
    spent ~4 ms of CPU per request here, aiohttp well under 1 ms."""
    import aiohttp

    statuses: dict[int, int] = {}
    labels: list = [None] * len(texts)

    request_of, label_of = ROUTES[route]

    async def client_loop(session, worker: int):
        for i in range(worker, len(texts), clients):
            path, body = request_of(texts[i])
            async with session.post(url + path, json=body) as response:
                body = await response.json()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    labels[i] = label_of(body)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(session, w) for w in range(clients)))
        return time.perf_counter() - started, statuses, labels


class KeepAliveClient:
    """One persistent HTTP/1.1 connection, the request bytes built once per text and the reply read by its
    Content-Length: the cheapest honest single-request client. (``http.client`` parses every reply's headers
    with the ``email`` package, ~0.3 ms of this machine's CPU per request, which is the client's cost, not the
    server's.) Any status but 200 is an error."""

    # uvicorn closes a keep-alive connection left idle for 5 s (its --timeout-keep-alive), and the next request on
    # it reads an empty reply: a connection idle this long (while other paths warm up) is replaced before use.
    IDLE_LIMIT_S = 4.0

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.address = (parts.hostname, parts.port)
        self.host = f"{parts.hostname}:{parts.port}"
        self._connect()

    def _connect(self) -> None:
        import socket

        self.sock = socket.create_connection(self.address, timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.last_used = time.monotonic()

    def _send(self, request: bytes) -> None:
        if time.monotonic() - self.last_used > self.IDLE_LIMIT_S:
            self.close()
            self._connect()
        self.sock.sendall(request)

    def predict(self, text: str, route: str = "api") -> tuple[dict, dict[str, str]]:
        """The reply's JSON and its headers (lower-case names), through the JSON API or the HF inference route."""
        path, request = ROUTES[route][0](text)
        body = json.dumps(request).encode()
        self._send(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body))
        return self._reply()

    def health(self) -> tuple[dict, dict[str, str]]:
        """``GET /api/health``: the same HTTP stack with no model call, i.e. what the transport alone costs."""
        self._send(b"GET /api/health HTTP/1.1\r\nHost: %s\r\n\r\n" % self.host.encode())
        return self._reply()

    def _reply(self) -> tuple[dict, dict[str, str]]:
        status = self.reader.readline()
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if "content-length" not in headers:
            raise RuntimeError(f"reply without Content-Length: {status!r}")
        reply = self.reader.read(int(headers["content-length"]))
        self.last_used = time.monotonic()
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"{status.decode().strip()}: {reply[:200]!r}")
        return json.loads(reply), headers

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "ag_news" / "test.csv")
    parser.add_argument("--base-config", type=Path, default=SHARED / "distilbert-base-uncased")
    # 100, not more: every text costs every path in every round (~0.3 s here), and the run should stay under
    # ~15 minutes on 2 cores. The p99 of 100 texts is about the round's slowest; the median over rounds keeps one
    # unlucky text from becoming the result.
    parser.add_argument("--latency-texts", type=int, default=100, help="Single-text calls timed per path and round.")
    parser.add_argument("--latency-idle-ms", type=float, default=100.0,
                        help="Idle pause before each single-text call: a lone request at an idle server (longer than "
                             "worker threads spin after a call).")
    parser.add_argument("--latency-rounds", type=int, default=5,
                        help="Latency rounds (every text through every path in each); medians over rounds.")
    parser.add_argument("--throughput-texts", type=int, default=1024, help="Texts per path in the throughput phase.")
    parser.add_argument("--rounds", type=int, default=4, help="Throughput phases alternate paths in this many rounds.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--peak-seconds", type=float, default=2.0,
                        help="How long each matmul peak measurement (fp32, int8; at the start and the end) runs.")
    parser.add_argument("--cold-starts", type=int, default=3,
                        help="Cold starts of each kind (import gradio, the Space, the pipeline), taking turns.")
    parser.add_argument("--space-quantize", choices=("auto", "int8"), default="auto",
                        help="QUANTIZE of the `space` server and the Space's cold starts: auto, what a Space "
                             "gets (the int8 graph where ONNX Runtime is installed and the graph agrees with "
                             "fp32), or int8 (the graph, unchecked).")
    parser.add_argument("--optimum-python", default=os.environ.get("OPTIMUM_PYTHON"),
                        help="A Python with optimum[onnxruntime] installed (it needs transformers 4, so a venv of "
                             "its own): adds optimum's own int8 pipeline as a path. See benchmarks/optimum_worker.py.")
    parser.add_argument("--accuracy-model", help="A trained model folder: accuracy of fp32 / int8 paths on --data.")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "inference.json")
    args = parser.parse_args(argv)
    for name, least in (("latency_texts", 2), ("latency_rounds", 1), ("cold_starts", 1), ("rounds", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}")
    # SIGTERM unwinds like Ctrl-C: the servers and workers are closed (finally) and the work folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # The model, its ONNX exports and the servers' logs go here; it goes when the run does.
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as work:
        return run(args, Path(work))


def run(args, work: Path) -> int:
    import copy

    import torch
    import transformers

    from distrinews.core.machine import cpu_has_int8_dot_product, usable_cores
    from distrinews.serving.backends import OnnxInt8Backend
    from distrinews.serving.export import write_shipped_graph
    from distrinews.core.model_files import read_serving_files
    from distrinews.core.modeling import load_classifier
    from distrinews.core.predict import Encoder, model_task, predict_with, torch_logits
    from distrinews.core.windows import WindowPolicy, scores_from_logits

    torch.set_num_threads(usable_cores())
    texts, gold = read_ag_news(args.data)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    latency_texts = [texts[i] for i in order[:args.latency_texts]]
    throughput_texts = [texts[i] for i in order[:args.throughput_texts]]
    model_dir = build_classifier(work / "model", args.base_config)
    results: dict = {"machine": {"cores": usable_cores(), "int8_dot_product": cpu_has_int8_dot_product(),
                                 "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
                                 "torch": torch.__version__, "transformers": transformers.__version__},
                     "model": f"the architecture of {args.base_config} (random init, 4 labels), its real tokenizer",
                     "data": str(args.data), "space_quantize": args.space_quantize,
                     "latency_texts": len(latency_texts), "latency_rounds": args.latency_rounds,
                     "throughput_texts": len(throughput_texts), "clients": args.clients, "paths": {}}

    results["peak_gflops"] = {"start": measure_peaks(usable_cores(), work, args.peak_seconds)}
    classifier = transformers.pipeline("text-classification", model=str(model_dir), device=-1)
    model, tokenizer = load_classifier(str(model_dir))
    task = model_task(model)
    fp32 = torch_logits(model.eval())
    plain = plain_ort_int8(model, work)
    # The int8 graph ships with the model, as `distrinews push` uploads it, so the `space` server (and every cold
    # start below) serves it as a deployed Space does, without torch. A copy: shipping rewrites the model it is
    # given (the last layer computes position 0 only), and `model` stays the fp32 reference.
    shipped = write_shipped_graph(copy.deepcopy(model), model_dir, tokenizer)
    optimum = OptimumWorker(args.optimum_python, model_dir, usable_cores(), work / "optimum.log") \
        if args.optimum_python else None
    if optimum:
        results["machine"]["optimum_environment"] = optimum.versions
    # `space` is the Space as deployed (int8: a lane per core); `space-1-lane` the same with one session over every
    # core (INFERENCE_LANES=1), the other way to use the cores, measured beside it.
    server_settings = {"space-fp32": {"QUANTIZE": "none"}, "space": {"QUANTIZE": args.space_quantize},
                       "space-1-lane": {"QUANTIZE": args.space_quantize, "INFERENCE_LANES": "1"}}
    servers = {name: SpaceServer(str(model_dir), work / "onnx-cache", work / f"uvicorn-{name}.log", **settings)
               for name, settings in server_settings.items()}
    http = {}
    try:
        info = {name: server.wait_ready() for name, server in servers.items()}
        http = {name: KeepAliveClient(server.url) for name, server in servers.items()}
        # The first request after the Space became ready, before any warm-up of ours: what its first user gets.
        started = time.perf_counter()
        _, headers = http["space"].predict(latency_texts[0])
        cold_request = {**server_timing(headers["server-timing"]), "total": (time.perf_counter() - started) * 1000}

        # Where each request's time went, per text: the Space's Server-Timing stages and round trip, and the
        # stages of the two in-process int8 stacks (ms).
        stage_log: dict[str, list[dict[str, float]]] = {"space": [], "ort-int8": [], "space-in-process": []}

        def timed(call):
            def run(text):
                started = time.perf_counter()
                call(text)
                return time.perf_counter() - started
            return run

        def space_request(text):
            started = time.perf_counter()
            _, headers = http["space"].predict(text)
            seconds = time.perf_counter() - started
            stage_log["space"].append({**server_timing(headers["server-timing"]), "total": seconds * 1000})
            return seconds

        def bare_session(text):
            """The bare session, as a user would call it: tokenize one text, run, softmax (no pipeline around it)."""
            started = time.perf_counter()
            batch = dict(tokenizer([text], truncation=True, max_length=128, return_tensors="np"))
            tokenized = time.perf_counter()
            scores_from_logits(plain(batch), "softmax")
            finished = time.perf_counter()
            stage_log["ort-int8"].append({"tokenize": (tokenized - started) * 1000,
                                          "session_run_softmax": (finished - tokenized) * 1000,
                                          "total": (finished - started) * 1000})
            return finished - started

        # The Space's own int8 stack without HTTP or the batcher: its tokenizer (the model's tokenizer.json through
        # the Rust Encoder) and its session over the shipped graph, called through predict_with as a batch is.
        space_files = read_serving_files(model_dir)
        space_encoder = Encoder.from_files(space_files, WindowPolicy(info["space"]["max_length"]))
        # the session the space server gives a lone request (chosen when it started: /api/info)
        space_backend = OnnxInt8Backend(shipped, info["space"].get("lone_request_threads") or None)

        def space_in_process(text):
            session_s = 0.0

            def logits(batch):
                nonlocal session_s
                started = time.perf_counter()
                out = space_backend.logits(batch)
                session_s += time.perf_counter() - started
                return out

            started = time.perf_counter()
            predict_with(logits, space_encoder, space_files.task, [text], max_length=space_encoder.max_length,
                         batch_size=32, pad_to_multiple_of=1)
            seconds = time.perf_counter() - started
            stage_log["space-in-process"].append({"around_session": (seconds - session_s) * 1000,
                                                  "session": session_s * 1000, "predict_with": seconds * 1000})

        # Each path: text -> seconds for one single-text call.
        single = {
            "pipeline": timed(lambda text: classifier(text, truncation=True, max_length=128)),
            "ort-int8": bare_session,
            "space-fp32": timed(lambda text: http["space-fp32"].predict(text)),
            "space": space_request,
            "space-1-lane": timed(lambda text: http["space-1-lane"].predict(text)),
            "space-hf": timed(lambda text: http["space"].predict(text, route="hf")),
        }
        if optimum:
            # timed inside the worker around optimum's pipeline call, so the pipe to it costs nothing
            single["optimum-int8"] = lambda text: optimum.run(text=text)[0]
        for call in (*single.values(), space_in_process):
            for text in latency_texts[:5]:
                call(text)
        for entries in stage_log.values():
            entries.clear()  # the warm-up is not measured
        # Latency: each path alone, one text at a time with an idle pause before each (a Space's lone request:
        # the server was idle), in blocks whose order rotates over the rounds, so a busy minute shows as one
        # round's outlier in the spread instead of the result. A path is never timed right after another: worker
        # threads left spinning (ONNX Runtime's, OpenMP's) or woken cores would make it pay or profit for the path
        # before it (docs/experiments.md: one session's time varied 2x with the path timed before it).
        latencies = {name: [[] for _ in range(args.latency_rounds)] for name in single}
        round_trips = []  # the Space's HTTP round trip without a model call, in a block of its own
        blocks = {**{name: functools.partial(_record, latencies[name], single[name]) for name in single},
                  "health": functools.partial(_record_round_trip, round_trips, http["space"]),
                  "space-in-process": lambda text, round_: space_in_process(text)}
        names = list(blocks)
        for round_ in range(args.latency_rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                time.sleep(BLOCK_SETTLE_S)
                for text in latency_texts:
                    time.sleep(args.latency_idle_ms / 1000)
                    blocks[name](text, round_)

        # Throughput: the paths take turns on slices of the texts (rounds); each path's rate per round, and its
        # median [min, max] over the rounds.
        batched = {
            "pipeline": lambda part: [r["label"] for r in classifier(part, truncation=True, max_length=128,
                                                                      batch_size=32)],
            "ort-int8": lambda part: [p.label for p in predict_with(plain, tokenizer, task, part, max_length=128,
                                                                    batch_size=32, pad_to_multiple_of=1)],
        }
        if optimum:
            batched["optimum-int8"] = lambda part: optimum.run(texts=part, batch_size=32)
        rates = {name: [] for name in single}
        predicted = {name: [] for name in single}
        http_paths = {"space-fp32": ("space-fp32", "api"), "space": ("space", "api"),
                      "space-1-lane": ("space-1-lane", "api"), "space-hf": ("space", "hf")}
        statuses = {name: {} for name in http_paths}
        step = -(-len(throughput_texts) // args.rounds)
        for start in range(0, len(throughput_texts), step):
            part = throughput_texts[start:start + step]
            for name, run in batched.items():
                started = time.perf_counter()
                labels_ = run(part)
                seconds = time.perf_counter() - started
                if isinstance(labels_, tuple):  # (seconds timed inside the optimum worker, labels)
                    seconds, labels_ = labels_
                predicted[name] += labels_
                rates[name].append(len(part) / seconds)
            for name, (server, route) in http_paths.items():
                seconds, codes, labels_ = asyncio.run(concurrent_clients(servers[server].url, part, args.clients,
                                                                         route))
                rates[name].append(len(part) / seconds)
                predicted[name] += labels_
                for code, count in codes.items():
                    statuses[name][code] = statuses[name].get(code, 0) + count
    except Exception:
        for name, server in servers.items():
            print(f"--- {name} server (exit code {server.process.poll()}), its log ends:\n{server.log_tail()}",
                  file=sys.stderr)
        raise
    finally:
        for client in http.values():
            client.close()
        for server in servers.values():
            server.close()
        if optimum:
            optimum.close()

    # With the benchmark's servers gone, so that nothing else of ours runs beside the starting processes.
    results["cold_start"] = measure_cold_starts(args.cold_starts, model_dir, latency_texts[0], work,
                                                args.space_quantize)

    results["peak_gflops"]["end"] = measure_peaks(usable_cores(), work, args.peak_seconds)
    peak = {dtype: max(results["peak_gflops"]["start"][dtype], results["peak_gflops"]["end"][dtype])
            for dtype in ("fp32", "int8")}
    mean_tokens = {name: statistics.mean(len(ids) for ids in tokenizer(chosen, truncation=True, max_length=128)["input_ids"])
                   for name, chosen in (("latency", latency_texts), ("throughput", throughput_texts))}
    work_per_text = {name: served_flops(model.config, tokens) for name, tokens in mean_tokens.items()}
    results["work"] = {"mean_tokens": mean_tokens, "gflop_per_text": {k: round(v / 1e9, 3) for k, v in work_per_text.items()}}
    fp32_labels = [p.label for p in predict_with(fp32, tokenizer, task, throughput_texts, max_length=128)]
    paths = results["paths"]
    round_p50 = {}  # path -> its p50 in each round, for the per-round ratios
    for name in single:
        per_round = [percentiles(seconds) for seconds in latencies[name]]
        round_p50[name] = [r["p50_ms"] for r in per_round]
        row = {}
        for key in ("p50_ms", "p99_ms"):
            row[key], row[f"{key}_spread"] = median_spread([r[key] for r in per_round])
        pooled = [s for seconds in latencies[name] for s in seconds]
        if name in batched:
            # one text per call, as a server calling this path per request would run
            row["texts_per_s_32_clients"] = round(len(pooled) / sum(pooled), 1)
            row["texts_per_s_batch_32"], row["texts_per_s_batch_32_spread"] = median_spread(rates[name], 1)
        else:
            row["texts_per_s_32_clients"], row["texts_per_s_32_clients_spread"] = median_spread(rates[name], 1)
            server_info = info[http_paths[name][0]]
            row.update(statuses=statuses[name], quantization=server_info["quantization"],
                       lone_request_threads=server_info.get("lone_request_threads"))
            if name == "space":
                row["health_round_trip_p50_ms"] = percentiles(round_trips)["p50_ms"]
        row["agreement_with_fp32_pct"] = round(
            100 * sum(a == b for a, b in zip(predicted[name], fp32_labels)) / len(fp32_labels), 2)
        # The machine's own limit for this path's arithmetic: the time the work takes at the measured peak.
        int8 = name in ("ort-int8", "optimum-int8") or row.get("quantization") == "int8"
        row["peak_gflops"] = peak["int8" if int8 else "fp32"]
        row["floor_ms"] = round(1000 * work_per_text["latency"] / (row["peak_gflops"] * 1e9), 2)
        row["p50_of_peak"] = round(1000 * work_per_text["latency"] / (row["peak_gflops"] * 1e9) / row["p50_ms"], 6)
        row["throughput_of_peak"] = round(row["texts_per_s_32_clients"] * work_per_text["throughput"]
                                          / (row["peak_gflops"] * 1e9), 6)
        paths[name] = row
        print(f"{name}: {row}", flush=True)

    space_rows = [{**r, "outside_handler": r["total"] - r["handler"]} for r in stage_log["space"]]
    cold_request["outside_handler"] = cold_request["total"] - cold_request["handler"]
    results["stages"] = {
        "space": {"requests": len(space_rows), "median_ms": stage_medians(space_rows, SPACE_STAGES),
                  "cold_request_ms": {key: round(cold_request[key], 3) for key in SPACE_STAGES}},
        "space-in-process": {"texts": len(stage_log["space-in-process"]),
                             "median_ms": stage_medians(stage_log["space-in-process"],
                                                        ("around_session", "session", "predict_with"))},
        "ort-int8": {"texts": len(stage_log["ort-int8"]),
                     "median_ms": stage_medians(stage_log["ort-int8"], ("tokenize", "session_run_softmax", "total"))},
    }

    if args.accuracy_model:
        results["accuracy"] = measure_accuracy(args.accuracy_model, texts, gold, work)

    base = paths["pipeline"]
    ratios = {}
    # Per round, then median [min, max]: both p50s of a ratio come from the same minutes of the same machine.
    for key, other in (("p50_speedup_vs_pipeline", "pipeline"), ("p50_vs_ort_int8", "ort-int8"),
                       ("p50_vs_optimum_int8", "optimum-int8"), ("p50_hf_route_over_api", "space-hf")):
        if other in paths:
            ratios[key], ratios[f"{key}_spread"] = median_spread(
                [theirs / ours for theirs, ours in zip(round_p50[other], round_p50["space"])])
    ratios["p50_one_lane_over_lanes"], ratios["p50_one_lane_over_lanes_spread"] = median_spread(
        [theirs / ours for theirs, ours in zip(round_p50["space-1-lane"], round_p50["space"])])
    ratios["throughput_lanes_over_one_lane"], ratios["throughput_lanes_over_one_lane_spread"] = median_spread(
        [ours / theirs for ours, theirs in zip(rates["space"], rates["space-1-lane"])])
    results["ratios"] = {
        **ratios,
        "throughput_vs_pipeline_sequential": round(paths["space"]["texts_per_s_32_clients"]
                                                   / base["texts_per_s_32_clients"], 2),
        "throughput_vs_pipeline_batch_32": round(paths["space"]["texts_per_s_32_clients"]
                                                 / base["texts_per_s_batch_32"], 2),
    }
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten: {args.output}")
    return 0


def stage_medians(rows: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    """The median of each stage over ``rows`` (one per request), in ms: per stage, so they need not add up."""
    return {key: round(statistics.median(row[key] for row in rows), 3) for key in keys}


def measure_cold_starts(repeats: int, model_dir: Path, text: str, work: Path, quantize: str) -> dict:
    """Process start to ready, ``repeats`` times each, taking turns: ``import gradio`` (to exit), the Space (to
    the first 200 from /api/ready), the pipeline (to exit after its first prediction). Seconds."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}

    def process_seconds(*arguments: str) -> float:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"cold start {arguments[:2]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return seconds

    runs: dict[str, list[float]] = {"gradio_import_s": [], "space_ready_s": [], "pipeline_first_prediction_s": []}
    libtorch, quantization = [], set()
    for i in range(repeats):
        runs["gradio_import_s"].append(process_seconds("-c", "import gradio"))
        # A fresh, empty export cache: the shipped graph is the only int8 graph this server can find.
        server = SpaceServer(str(model_dir), Path(tempfile.mkdtemp(prefix="cold-cache-", dir=work)),
                             work / f"uvicorn-cold-{i}.log", QUANTIZE=quantize)
        try:
            quantization.add(server.wait_ready(timeout=600, poll_s=READY_POLL_S)["quantization"])
            runs["space_ready_s"].append(server.ready_s)
            libtorch.append(maps_libtorch(server.process.pid))
        except Exception:
            print(f"--- cold-start server, its log ends:\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.close()
        runs["pipeline_first_prediction_s"].append(process_seconds("-c", PIPELINE_COLD_START, str(model_dir), text))
    # Which heavy modules loading the model imports, from sys.modules (the memory map only shows shared libraries,
    # and transformers has none): one process that imports the app and loads the service as its lifespan does.
    imports = subprocess.run([sys.executable, "-c", SPACE_IMPORTS], cwd=REPO_ROOT, capture_output=True, text=True,
                             env={**env, "MODEL_ID": str(model_dir), "QUANTIZE": quantize,
                                  "ONNX_CACHE_DIR": tempfile.mkdtemp(prefix="cold-cache-", dir=work)})
    if imports.returncode != 0:
        raise RuntimeError(f"loading the Space's model failed ({imports.returncode}): {imports.stderr[-2000:]}")
    result: dict = {"repeats": repeats, "space_quantize": quantize}
    for key, seconds in runs.items():
        result[key], result[f"{key}_spread"] = median_spread(seconds)
    for key, (numerator, denominator) in {"space_vs_gradio_import": ("space_ready_s", "gradio_import_s"),
                                          "pipeline_vs_space": ("pipeline_first_prediction_s", "space_ready_s")
                                          }.items():
        result[key], result[f"{key}_spread"] = median_spread(
            [a / b for a, b in zip(runs[numerator], runs[denominator])])
    result.update(space_quantization=",".join(sorted(quantization)),
                  space_imports_torch=None if None in libtorch else any(libtorch),
                  space_heavy_modules=json.loads(imports.stdout.strip().splitlines()[-1]),
                  runs_s={key: [round(s, 3) for s in seconds] for key, seconds in runs.items()})
    return result


def measure_accuracy(model_path: str, texts: list[str], gold: list[int], work: Path) -> dict:
    """Accuracy on every text of the split: the model as trained (fp32 torch, untouched) and the Space's two
    backends, which serve it with the last layer computing position 0 only (``distrinews.serving.first_position``)."""
    import copy

    from distrinews.serving.backends import build_backend
    from distrinews.serving.export import cache_folder_name
    from distrinews.core.modeling import load_classifier
    from distrinews.core.predict import model_task, predict_with, torch_logits

    model, tokenizer = load_classifier(model_path)
    task = model_task(model)

    def served(quantization: str):  # a copy: serving rewrites the model it is given
        return build_backend(copy.deepcopy(model), quantization, cache_dir=work / "acc-cache",
                             cache_key=cache_folder_name(model_path, "bench")).logits

    paths = {"fp32 (torch, as trained)": torch_logits(model.eval()),
             "fp32 (QUANTIZE=none)": served("none"),
             "int8 (ONNX Runtime, QUANTIZE=int8)": served("int8")}
    predicted = {}
    for name, logits_of in paths.items():
        predictions = predict_with(logits_of, tokenizer, task, texts, max_length=128, batch_size=64,
                                   pad_to_multiple_of=1)
        predicted[name] = [task.labels.index(p.label) for p in predictions]
    reference = predicted["fp32 (torch, as trained)"]
    return {"model": model_path, "texts": len(texts), "paths": {
        name: {"accuracy_pct": round(100 * sum(p == g for p, g in zip(labels_, gold)) / len(gold), 2),
               "agreement_with_fp32_pct": round(100 * sum(p == r for p, r in zip(labels_, reference)) / len(gold), 2)}
        for name, labels_ in predicted.items()}}


def print_table(results: dict) -> None:
    def spread(value, bounds) -> str:
        return f"{value} [{bounds[0]}, {bounds[1]}]"

    def with_spread(row: dict, key: str) -> str:
        if key + "_spread" in row:
            return spread(row[key], row[key + "_spread"])
        return str(row.get(key, "-"))

    print(f"\nsingle-text latency: median over {results['latency_rounds']} rounds of {results['latency_texts']} texts "
          f"each, [min, max] of the rounds")
    print("| path | single p50, ms | single p99, ms | texts/s, 32 clients | texts/s, batch 32 | agreement with fp32 "
          "| p50 of peak | 32 clients of peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results["paths"].items():
        print(f"| {name} | {spread(r['p50_ms'], r['p50_ms_spread'])} | {spread(r['p99_ms'], r['p99_ms_spread'])} | "
              f"{with_spread(r, 'texts_per_s_32_clients')} | {with_spread(r, 'texts_per_s_batch_32')} | "
              f"{r['agreement_with_fp32_pct']}% | {r['p50_of_peak']:.1%} | {r['throughput_of_peak']:.1%} |")
    peaks, work = results["peak_gflops"], results["work"]
    print(f"\npeak on {results['machine']['cores']} cores, GFLOP/s (start, end of the run): fp32 "
          f"{peaks['start']['fp32']}, {peaks['end']['fp32']}; int8 (ONNX Runtime, the served recipe) "
          f"{peaks['start']['int8']}, {peaks['end']['int8']}. Work per text: {work['gflop_per_text']['latency']} GFLOP "
          f"at {work['mean_tokens']['latency']:.1f} tokens (latency texts), {work['gflop_per_text']['throughput']} "
          f"GFLOP at {work['mean_tokens']['throughput']:.1f} (throughput texts); of peak = that work at the peak "
          f"over the measured time.")
    ratios = results["ratios"]
    print("\nratios (per round, median [min, max]): " + ", ".join(
        f"{key} {spread(value, ratios[key + '_spread'])}" if key + "_spread" in ratios else f"{key} {value}"
        for key, value in ratios.items() if not key.endswith("_spread")))
    print(f"HTTP round trip of the Space without a model call (GET /api/health), p50: "
          f"{results['paths']['space']['health_round_trip_p50_ms']} ms")
    if results["paths"]["space"]["quantization"] != "int8":
        print(f"NOTE: QUANTIZE={results['space_quantize']} chose {results['paths']['space']['quantization']} here "
              f"(the Space's log says why), so `space` is fp32 torch, not the shipped int8 graph.")

    cold = results["cold_start"]
    print(f"\ncold start, {cold['repeats']} repeats taking turns: median [min, max], seconds")
    print("| process | start to ready |\n| --- | --- |")
    for key, what in (("gradio_import_s", '`python -c "import gradio"`, to exit'),
                      ("space_ready_s", f"the Space (QUANTIZE={cold['space_quantize']}: {cold['space_quantization']}), "
                                        "to /api/ready 200"),
                      ("pipeline_first_prediction_s", "transformers.pipeline, to exit after one prediction")):
        print(f"| {what} | {spread(cold[key], cold[key + '_spread'])} |")
    print(f"Space / import gradio: {spread(cold['space_vs_gradio_import'], cold['space_vs_gradio_import_spread'])} "
          f"(target <= 1.5); pipeline / Space: {spread(cold['pipeline_vs_space'], cold['pipeline_vs_space_spread'])}; "
          f"libtorch mapped in the Space process: {cold['space_imports_torch']}; heavy modules loading the model "
          f"imports: {cold['space_heavy_modules'] or 'none'}")

    stages = results["stages"]
    space, warm, first = stages["space"], stages["space"]["median_ms"], stages["space"]["cold_request_ms"]
    print(f"\nwhere a single request's time goes, ms: medians over {space['requests']} requests (each stage on its "
          f"own), and the first request after the Space became ready")
    print("| stage | median | first request |\n| --- | --- | --- |")
    for key, what in (("queue", "waiting for a batch (queue)"), ("batch", "tokenize + model call (batch)"),
                      ("respond", "building the response (respond)"), ("handler", "route handler in all (handler)"),
                      ("outside_handler", "outside the handler: parsing, validation, HTTP, client"),
                      ("total", "HTTP round trip")):
        print(f"| space: {what} | {warm[key]} | {first[key]} |")
    in_process = stages["space-in-process"]["median_ms"]
    for key, what in (("around_session", "clean, tokenize (Rust Encoder), pad, labels"),
                      ("session", "session.run + softmax"), ("predict_with", "predict_with in all")):
        print(f"| Space's stack in-process: {what} | {in_process[key]} | - |")
    bare = stages["ort-int8"]["median_ms"]
    for key, what in (("tokenize", "tokenizer([text], return_tensors='np')"),
                      ("session_run_softmax", "session.run + softmax"), ("total", "in all")):
        print(f"| ort-int8 in-process: {what} | {bare[key]} | - |")

    if "accuracy" in results:
        print(f"\naccuracy on {results['accuracy']['texts']} texts with {results['accuracy']['model']}:")
        for name, r in results["accuracy"]["paths"].items():
            print(f"  {name}: {r['accuracy_pct']}% (agrees with fp32 on {r['agreement_with_fp32_pct']}%)")


if __name__ == "__main__":
    sys.exit(main())
