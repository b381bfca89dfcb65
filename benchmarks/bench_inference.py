"""CPU inference benchmark, side by side in one run: transformers.pipeline, ONNX Runtime int8, and the Space.

    python benchmarks/bench_inference.py                                   # DistilBERT-base size, real AG News
    python benchmarks/bench_inference.py --accuracy-model runs/minilm/model # + accuracy on the full test split

What it measures, on real AG News test text (title + description, ../shared/data/ag_news/test.csv):

1. ``pipeline``: ``transformers.pipeline("text-classification")`` fp32, one text per call (how most people serve
   a model), and with ``batch_size=32`` for reference.
2. ``ort-int8``: the ONNX Runtime dynamic int8 recipe that ``optimum``'s ``ORTQuantizer`` (avx512_vnni, dynamic)
   applies: ``torch.onnx.export`` + ``onnxruntime.quantization.quantize_dynamic``, called in-process. optimum
   itself is not used: ``optimum[onnxruntime]`` downgrades transformers to 4.57 (see ../shared/docs/BASELINES.md).
   The Space's int8 backend (``distrinews.backends``) quantizes the same way, from a model whose last layer
   computes only the position the head reads (``distrinews.first_position``: same logits, less work).
3. ``space-fp32`` and ``space``: the app itself (``uvicorn app.app:app``) with QUANTIZE=none (fp32 torch) and
   QUANTIZE=auto (int8 where the CPU has VNNI), over HTTP on 127.0.0.1, so every number includes HTTP, JSON,
   validation and the micro-batcher.

Latency: single texts, one after another, p50/p99; each text goes through all four paths back to back, so
the load of other users of a shared machine falls on every path alike. After each text, one ``GET /api/health``
to the int8 Space is timed too: the HTTP round trip with no model call, the part of the Space's latency that
an in-process call never pays. Throughput: 32 concurrent HTTP clients
for the Space, texts/s; the paths take turns on slices of the texts. For the in-process baselines "32 clients"
is their one-text-per-call rate (a server calling the pipeline per request cannot do better on 2 cores: calls
would only contend), and "batch 32" is their rate on 32-text batches, given for reference. The HTTP clients
run on the same 2 cores as the server, so the Space's numbers pay for their own load generator.

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
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SHARED = REPO_ROOT.parent / "shared" / "data"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# Pause between two timed calls. ONNX Runtime's and OpenMP's worker threads keep spinning for a few ms after a
# call returns (~5 ms of CPU per call measured here); with 2 cores, a path timed while the previous path's
# threads still spin runs up to 2x slower, so every path waits them out.
SETTLE_S = 0.03


def read_ag_news(path: Path) -> tuple[list[str], list[int]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    texts = [f"{title} {description}".replace("\\", " ").strip() for _, title, description in rows]
    return texts, [int(label) - 1 for label, _, _ in rows]


def percentiles(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=100)
    return {"p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2)}


def time_each(call, texts: list[str], warmup: int = 5) -> list[float]:
    for text in texts[:warmup]:
        call(text)
    seconds = []
    for text in texts:
        started = time.perf_counter()
        call(text)
        seconds.append(time.perf_counter() - started)
    return seconds


def build_distilbert_base(folder: Path, config_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig.from_pretrained(config_dir, num_labels=4, id2label=dict(enumerate(LABELS)),
                                              label2id={n: i for i, n in enumerate(LABELS)})
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(folder)
    return folder


def plain_ort_int8(model, folder: Path):
    """optimum's dynamic-int8 recipe without optimum: export, quantize_dynamic (int8 weights), no fusion."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from distrinews.backends import usable_cores

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

    def probabilities(batch):
        (logits,) = session.run(["logits"], {name: batch[name] for name in ("input_ids", "attention_mask")})
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    return probabilities


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
        self.process = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.app:app", "--host", "127.0.0.1",
                                         "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
                                        cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 900) -> dict:
        import httpx  # only for polling readiness

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log.name}")
            try:
                if httpx.get(self.url + "/api/ready", timeout=5).status_code == 200:
                    return httpx.get(self.url + "/api/info", timeout=5).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("server not ready")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


async def concurrent_clients(url: str, texts: list[str], clients: int) -> tuple[float, dict[int, int], list]:
    """``clients`` keep-alive connections posting one text each, back to back, until ``texts`` are done.
    aiohttp, not httpx: on 2 shared cores the load generator competes with the server, and httpx's async client
    spent ~4 ms of CPU per request here, aiohttp well under 1 ms."""
    import aiohttp

    statuses: dict[int, int] = {}
    labels: list = [None] * len(texts)

    async def client_loop(session, worker: int):
        for i in range(worker, len(texts), clients):
            async with session.post(url + "/api/predict", json={"text": texts[i]}) as response:
                body = await response.json()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    labels[i] = body["predictions"][0]["label"]

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

    def __init__(self, url: str):
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def predict(self, text: str) -> dict:
        body = json.dumps({"text": text}).encode()
        self.sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (self.host.encode(), len(body), body))
        return self._reply()

    def health(self) -> dict:
        """``GET /api/health``: the same HTTP stack with no model call, i.e. what the transport alone costs."""
        self.sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: %s\r\n\r\n" % self.host.encode())
        return self._reply()

    def _reply(self) -> dict:
        status = self.reader.readline()
        length = None
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"reply without Content-Length: {status!r}")
        reply = self.reader.read(length)
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"{status.decode().strip()}: {reply[:200]!r}")
        return json.loads(reply)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "ag_news" / "test.csv")
    parser.add_argument("--base-config", type=Path, default=SHARED / "distilbert-base-uncased")
    parser.add_argument("--latency-texts", type=int, default=200, help="Single-text calls timed per path.")
    parser.add_argument("--throughput-texts", type=int, default=1024, help="Texts per path in the throughput phase.")
    parser.add_argument("--rounds", type=int, default=4, help="Throughput phases alternate paths in this many rounds.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--optimum-python", default=os.environ.get("OPTIMUM_PYTHON"),
                        help="A Python with optimum[onnxruntime] installed (it needs transformers 4, so a venv of "
                             "its own): adds optimum's own int8 pipeline as a path. See benchmarks/optimum_worker.py.")
    parser.add_argument("--accuracy-model", help="A trained model folder: accuracy of fp32 / int8 paths on --data.")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "inference.json")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the servers and workers are closed (finally) and the work folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # The model, its ONNX exports and the servers' logs go here; it goes when the run does.
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as work:
        return run(args, Path(work))


def run(args, work: Path) -> int:
    import torch
    import transformers

    from distrinews.backends import cpu_has_int8_dot_product, usable_cores
    from distrinews.modeling import load_classifier
    from distrinews.predict import label_names, predict_with, torch_probabilities

    torch.set_num_threads(usable_cores())
    texts, gold = read_ag_news(args.data)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    latency_texts = [texts[i] for i in order[:args.latency_texts]]
    throughput_texts = [texts[i] for i in order[:args.throughput_texts]]
    model_dir = build_distilbert_base(work / "distilbert-base", args.base_config)
    results: dict = {"machine": {"cores": usable_cores(), "int8_dot_product": cpu_has_int8_dot_product(),
                                 "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
                                 "torch": torch.__version__, "transformers": transformers.__version__},
                     "model": "distilbert-base-uncased architecture, random init, real tokenizer",
                     "data": str(args.data), "latency_texts": len(latency_texts),
                     "throughput_texts": len(throughput_texts), "clients": args.clients, "paths": {}}

    classifier = transformers.pipeline("text-classification", model=str(model_dir), device=-1)
    model, tokenizer = load_classifier(str(model_dir))
    labels = label_names(model)
    fp32 = torch_probabilities(model.eval())
    plain = plain_ort_int8(model, work)
    optimum = OptimumWorker(args.optimum_python, model_dir, usable_cores(), work / "optimum.log") \
        if args.optimum_python else None
    if optimum:
        results["machine"]["optimum_environment"] = optimum.versions
    servers = {name: SpaceServer(str(model_dir), work / "onnx-cache", work / f"uvicorn-{name}.log", QUANTIZE=quantize)
               for name, quantize in (("space-fp32", "none"), ("space", "auto"))}
    http = {}
    try:
        info = {name: server.wait_ready() for name, server in servers.items()}
        http = {name: KeepAliveClient(server.url) for name, server in servers.items()}

        def via_http(name):
            return lambda text: http[name].predict(text)

        def timed(call):
            def run(text):
                started = time.perf_counter()
                call(text)
                return time.perf_counter() - started
            return run

        # Each path: text -> seconds for one single-text call.
        single = {
            "pipeline": timed(lambda text: classifier(text, truncation=True, max_length=128)),
            # the bare session, as a user would call it: tokenize one text, run, softmax (no pipeline around it)
            "ort-int8": timed(lambda text: plain(dict(tokenizer([text], truncation=True, max_length=128,
                                                                return_tensors="np")))),
            "space-fp32": timed(via_http("space-fp32")),
            "space": timed(via_http("space")),
        }
        if optimum:
            # timed inside the worker around optimum's pipeline call, so the pipe to it costs nothing
            single["optimum-int8"] = lambda text: optimum.run(text=text)[0]
        # Latency: every text goes through every path back to back, so load from other users of the shared
        # cores lands on all paths alike instead of on whichever path happened to run during a busy minute.
        latencies = {name: [] for name in single}
        round_trips = []  # the Space's HTTP round trip without a model call, timed along with the paths
        for name, call in single.items():
            for text in latency_texts[:5]:
                call(text)
        for i, text in enumerate(latency_texts):
            names = list(single)
            for name in names[i % len(names):] + names[:i % len(names)]:
                time.sleep(SETTLE_S)  # the previous path's worker threads stop spinning before the next is timed
                latencies[name].append(single[name](text))
            time.sleep(SETTLE_S)
            started = time.perf_counter()
            http["space"].health()
            round_trips.append(time.perf_counter() - started)

        # Throughput: the paths take turns on slices of the texts (rounds), elapsed time summed per path.
        batched = {
            "pipeline": lambda part: [r["label"] for r in classifier(part, truncation=True, max_length=128,
                                                                      batch_size=32)],
            "ort-int8": lambda part: [p.label for p in predict_with(plain, tokenizer, labels, part, max_length=128,
                                                                    batch_size=32, pad_to_multiple_of=1)],
        }
        if optimum:
            batched["optimum-int8"] = lambda part: optimum.run(texts=part, batch_size=32)
        elapsed = {name: 0.0 for name in single}
        predicted = {name: [] for name in single}
        statuses = {name: {} for name in servers}
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
                elapsed[name] += seconds
            for name, server in servers.items():
                seconds, codes, labels_ = asyncio.run(concurrent_clients(server.url, part, args.clients))
                elapsed[name] += seconds
                predicted[name] += labels_
                for code, count in codes.items():
                    statuses[name][code] = statuses[name].get(code, 0) + count
    finally:
        for client in http.values():
            client.close()
        for server in servers.values():
            server.close()
        if optimum:
            optimum.close()

    fp32_labels = [p.label for p in predict_with(fp32, tokenizer, labels, throughput_texts, max_length=128)]
    paths = results["paths"]
    for name in single:
        row = {**percentiles(latencies[name])}
        if name in batched:
            # one text per call, as a server calling this path per request would run
            row["texts_per_s_32_clients"] = round(len(latencies[name]) / sum(latencies[name]), 1)
            row["texts_per_s_batch_32"] = round(len(throughput_texts) / elapsed[name], 1)
        else:
            row["texts_per_s_32_clients"] = round(len(throughput_texts) / elapsed[name], 1)
            row.update(statuses=statuses[name], quantization=info[name]["quantization"])
            if name == "space":
                row["health_round_trip_p50_ms"] = percentiles(round_trips)["p50_ms"]
        row["agreement_with_fp32_pct"] = round(
            100 * sum(a == b for a, b in zip(predicted[name], fp32_labels)) / len(fp32_labels), 2)
        paths[name] = row
        print(f"{name}: {row}", flush=True)

    if args.accuracy_model:
        results["accuracy"] = measure_accuracy(args.accuracy_model, texts, gold, work)

    base = paths["pipeline"]
    results["ratios"] = {
        "p50_speedup_vs_pipeline": round(base["p50_ms"] / paths["space"]["p50_ms"], 2),
        "p50_vs_ort_int8": round(paths["ort-int8"]["p50_ms"] / paths["space"]["p50_ms"], 2),
        **({"p50_vs_optimum_int8": round(paths["optimum-int8"]["p50_ms"] / paths["space"]["p50_ms"], 2)}
           if "optimum-int8" in paths else {}),
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


def measure_accuracy(model_path: str, texts: list[str], gold: list[int], work: Path) -> dict:
    """Accuracy on every text of the split: the model as trained (fp32 torch, untouched) and the Space's two
    backends, which serve it with the last layer computing position 0 only (``distrinews.first_position``)."""
    import copy

    from distrinews.backends import build_backend, cache_folder_name
    from distrinews.modeling import load_classifier
    from distrinews.predict import label_names, predict_with, torch_probabilities

    model, tokenizer = load_classifier(model_path)
    labels = label_names(model)

    def served(quantization: str):  # a copy: serving rewrites the model it is given
        return build_backend(copy.deepcopy(model), quantization, cache_dir=work / "acc-cache",
                             cache_key=cache_folder_name(model_path, "bench")).probabilities

    paths = {"fp32 (torch, as trained)": torch_probabilities(model.eval()),
             "fp32 (QUANTIZE=none)": served("none"),
             "int8 (ONNX Runtime, QUANTIZE=int8)": served("int8")}
    predicted = {}
    for name, probabilities_of in paths.items():
        predictions = predict_with(probabilities_of, tokenizer, labels, texts, max_length=128, batch_size=64,
                                   pad_to_multiple_of=1)
        predicted[name] = [labels.index(p.label) for p in predictions]
    reference = predicted["fp32 (torch, as trained)"]
    return {"model": model_path, "texts": len(texts), "paths": {
        name: {"accuracy_pct": round(100 * sum(p == g for p, g in zip(labels_, gold)) / len(gold), 2),
               "agreement_with_fp32_pct": round(100 * sum(p == r for p, r in zip(labels_, reference)) / len(gold), 2)}
        for name, labels_ in predicted.items()}}


def print_table(results: dict) -> None:
    print("\n| path | single p50 | single p99 | texts/s, 32 clients | texts/s, batch 32 | agreement with fp32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results["paths"].items():
        print(f"| {name} | {r['p50_ms']} ms | {r['p99_ms']} ms | {r['texts_per_s_32_clients']} | "
              f"{r.get('texts_per_s_batch_32', '-')} | {r['agreement_with_fp32_pct']}% |")
    print(f"\nratios: {results['ratios']}")
    print(f"HTTP round trip of the Space without a model call (GET /api/health), p50: "
          f"{results['paths']['space']['health_round_trip_p50_ms']} ms")
    if "accuracy" in results:
        print(f"\naccuracy on {results['accuracy']['texts']} texts with {results['accuracy']['model']}:")
        for name, r in results["accuracy"]["paths"].items():
            print(f"  {name}: {r['accuracy_pct']}% (agrees with fp32 on {r['agreement_with_fp32_pct']}%)")


if __name__ == "__main__":
    sys.exit(main())
