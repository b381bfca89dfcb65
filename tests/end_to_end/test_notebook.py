"""The Kaggle notebook, executed headlessly the way "Run all" runs it, in SMOKE mode on this CPU machine.

    python -m pytest tests/end_to_end/test_notebook.py -q -s      # -s prints how long the smoke execution took

Parameters are set the papermill way: a cell inserted right after the cell tagged "parameters". Training
really runs through `accelerate launch` with accelerate_configs/cpu.yaml (2 processes, gloo), on a tiny
model and small data built by the tests; no network, no token, so nothing is pushed.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "distrinews_kaggle.ipynb"
LABELS = ("World", "Sports", "Business", "Sci/Tech")
TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def with_parameters(notebook: nbformat.NotebookNode, **values) -> nbformat.NotebookNode:
    """A copy with a cell setting ``values`` right after the "parameters" cell, as papermill injects it."""
    notebook = copy.deepcopy(notebook)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, injected)
    return notebook


def cell_text(cell) -> str:
    """Everything a cell showed as text: streams, results and displays (Markdown included)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.extend(str(output.data.get(kind, "")) for kind in ("text/markdown", "text/plain"))
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
    return "\n".join(parts)


def cell_index(notebook, marker: str) -> int:
    matches = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and marker in cell.source]
    assert len(matches) == 1, f"expected one code cell containing {marker!r}, found {len(matches)}"
    return matches[0]


def training_cell_index(notebook) -> int:
    return cell_index(notebook, "-m distrinews launch")


def notebook_client(notebook, working_dir) -> NotebookClient:
    # The working directory plays /kaggle/working: relative paths in the notebook land there.
    return NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(working_dir)}})


def run_cells(notebook, upto: int, working_dir, env: dict) -> None:
    """Execute cells 0..upto (inclusive) in one fresh kernel, as "Run all" would up to there."""
    client = notebook_client(notebook, working_dir)
    with client.setup_kernel(env=env):
        for index in range(upto + 1):
            client.execute_cell(notebook.cells[index], index)  # raises CellExecutionError if the cell fails


def kernel_env(**extra: str) -> dict:
    # The kernel and the processes it starts import THIS checkout's distrinews, as a Kaggle session would
    # import the installed one.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("HF_TOKEN", None)  # no token unless a test gives one: the notebook must then carry on without pushing
    return {**env, **extra}


@dataclass
class SmokeRun:
    notebook: nbformat.NotebookNode  # every cell executed once, in order
    rerun: nbformat.NotebookNode  # the training cell executed a second time in the same kernel
    run_dir: Path
    plots: dict  # plot file name -> bytes, as written by the first run


@pytest.fixture(scope="module")
def smoke_run(tiny_model, ag_news_dir, tmp_path_factory):
    """Run every cell once, then the training cell again in the same kernel (as a user rerunning it would)."""
    working_dir = tmp_path_factory.mktemp("kaggle-working")
    full_run_dir = working_dir / "runs" / "ag_news"
    run_dir = working_dir / "runs" / "ag_news-smoke"  # where a SMOKE run goes, so a full run never resumes it
    notebook = with_parameters(
        nbformat.read(NOTEBOOK, as_version=4), MODEL_ID=str(tiny_model), DATASET=str(ag_news_dir),
        OUTPUT_DIR=str(full_run_dir), SMOKE=True, BATCH_SIZE=8, LEARNING_RATE=5e-3, CHECKPOINT_EVERY=10)
    client = notebook_client(notebook, working_dir)
    started = time.perf_counter()
    with client.setup_kernel(env=kernel_env()):
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        seconds = time.perf_counter() - started
        plots = {name: (run_dir / "plots" / name).read_bytes() for name in ("loss.png", "confusion_matrix.png")}
        train_index = training_cell_index(notebook)
        rerun = copy.deepcopy(notebook.cells[train_index])
        client.execute_cell(rerun, train_index)
    assert not full_run_dir.exists()
    print(f"\nsmoke execution of the notebook: {seconds:.1f} s (+ {time.perf_counter() - started - seconds:.1f} s "
          "for the training cell run again)")
    return SmokeRun(notebook, rerun, run_dir, plots)


def test_every_cell_runs_without_error(smoke_run):
    notebook = smoke_run.notebook
    errors = [(i, output.ename) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors
    assert all(cell.execution_count for cell in notebook.cells if cell.cell_type == "code")


def test_setup_cells_report_what_they_found(smoke_run):
    notebook = smoke_run.notebook
    text = "\n".join(cell_text(cell) for cell in notebook.cells)
    assert "distrinews is already importable: nothing to install" in text
    assert "No GPU found" in text
    assert "No Hugging Face token" in text and "not pushed to the Hub" in text
    assert "no GPU found: 2 CPU processes, DDP over gloo" in text


def test_training_runs_two_processes_with_progress(smoke_run):
    notebook, output_dir = smoke_run.notebook, smoke_run.run_dir
    text = cell_text(notebook.cells[training_cell_index(notebook)])
    assert "accelerate_configs/cpu.yaml" in text
    assert "training:" in text  # the main process's progress bar, streamed into the cell
    assert text.count("test accuracy") == 1  # printed by the main process only
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["train"]["num_processes"] == 2
    assert metrics["train"]["distributed_type"] == "MULTI_CPU"


def test_results_show_metrics_table_and_both_plots(smoke_run):
    notebook, output_dir, plots = smoke_run.notebook, smoke_run.run_dir, smoke_run.plots
    metrics = json.loads((output_dir / "metrics.json").read_text())
    markdown = [output.data["text/markdown"] for cell in notebook.cells if cell.cell_type == "code"
                for output in cell.outputs if "text/markdown" in output.get("data", {})]
    assert len(markdown) == 1
    table = markdown[0]
    for split in ("validation", "test"):
        assert f"| {split} | {metrics[split]['num_examples']} |" in table
    assert f"{metrics['test']['accuracy']:.4f}" in table and f"{metrics['validation']['macro_f1']:.4f}" in table
    images = [base64.b64decode(output.data["image/png"]) for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 2
    assert images == [plots["loss.png"], plots["confusion_matrix.png"]]


def test_smoke_run_skips_the_push_and_classifies_with_the_local_model(smoke_run):
    notebook, output_dir = smoke_run.notebook, smoke_run.run_dir
    text = "\n".join(cell_text(cell) for cell in notebook.cells)
    assert "SMOKE run: not pushing" in text
    assert f"Loaded {output_dir / 'model'}" in text
    predicted = re.findall(r"^(\S+)\s+\d+\.\d%\s+\S", text, flags=re.MULTILINE)
    assert len(predicted) == 4 and set(predicted) <= set(LABELS)
    assert f"Not pushed. The model is in {(output_dir / 'model').resolve()}" in text


def test_running_the_training_cell_again_resumes(smoke_run):
    rerun, output_dir = smoke_run.rerun, smoke_run.run_dir
    text = cell_text(rerun)
    assert f"Resuming from {output_dir / 'checkpoints'}" in text
    assert not [output for output in rerun.outputs if output.output_type == "error"]
    # Nothing was left to train: the resumed run ends with the same best model, hence the same test result.
    first = cell_text(smoke_run.notebook.cells[training_cell_index(smoke_run.notebook)])
    assert re.findall(r"test accuracy \S+", text) == re.findall(r"test accuracy \S+", first)


def test_notebook_in_git_has_no_outputs_and_no_secrets():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for index, cell in enumerate(code_cells):
        assert cell.outputs == [], f"code cell {index} has saved outputs: clear them before committing"
        assert cell.execution_count is None, f"code cell {index} has an execution count: clear outputs"
    raw = NOTEBOOK.read_text(encoding="utf-8")
    assert not TOKEN_LIKE.search(raw), "something shaped like a Hugging Face token is in the notebook"
    assert "image/png" not in raw and '"output_type"' not in raw
    # The token is read at run time only, never a parameter someone might fill in and commit.
    parameters = next(cell for cell in code_cells if "parameters" in cell.metadata.get("tags", []))
    assert "TOKEN" not in parameters.source


def test_with_a_search_space_the_training_cell_runs_a_sweep_and_shows_its_best_trial(tiny_model, ag_news_dir,
                                                                                     tmp_path):
    pytest.importorskip("optuna")
    notebook = with_parameters(
        nbformat.read(NOTEBOOK, as_version=4), MODEL_ID=str(tiny_model), DATASET=str(ag_news_dir),
        OUTPUT_DIR=str(tmp_path / "runs" / "ag_news"), SMOKE=True, BATCH_SIZE=8, EXTRA_TRAIN_ARGS="--max_steps 4",
        SWEEP_SPACE="learning_rate: {choices: [0.005]}", SWEEP_TRIALS=1)
    results_index = cell_index(notebook, "metrics_markdown_table(metrics)")
    run_cells(notebook, results_index, tmp_path, kernel_env())
    sweep_dir = tmp_path / "runs" / "ag_news-smoke-sweep"
    text = cell_text(notebook.cells[training_cell_index(notebook)])
    assert "sweep 'ag_news-smoke-sweep': 1 trials over learning_rate" in text, text[-3000:]
    assert f"The best trial, {sweep_dir / 'trial-0000'}, is the run below" in text
    metrics = json.loads((sweep_dir / "trial-0000" / "metrics.json").read_text())
    assert metrics["train"]["num_processes"] == 2 and metrics["global_step"] == 4  # through distrinews launch
    assert "| 0 | 0.005 |" in (sweep_dir / "trials.md").read_text()
    assert f"{metrics['test']['accuracy']:.4f}" in cell_text(notebook.cells[results_index])


def test_failed_training_fails_the_cell_and_shows_why(tmp_path):
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), SMOKE=True,
                               DATASET=str(tmp_path / "no-such-data"), OUTPUT_DIR=str(tmp_path / "run"))
    train_index = training_cell_index(notebook)
    with pytest.raises(CellExecutionError, match=r"training failed with exit code [1-9]"):
        run_cells(notebook, train_index, tmp_path, kernel_env())
    # The training processes' own one-line error is streamed into the cell, above the failure.
    assert re.search(r"error: dataset '\S*no-such-data' is neither a local folder nor a loadable Hub dataset",
                     cell_text(notebook.cells[train_index]))


class FakeHub(BaseHTTPRequestHandler):
    """Answers /api/whoami-v2 like the Hub: 200 and a user for ``valid_token``, 401 for any other token."""

    valid_token = ""
    seen_authorizations: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        authorization = self.headers.get("Authorization", "")
        FakeHub.seen_authorizations.append(authorization)
        if self.path == "/api/whoami-v2" and authorization == f"Bearer {FakeHub.valid_token}":
            status, body = 200, {"type": "user", "name": "kaggle-user", "auth": {"accessToken": {"role": "write"}}}
        else:
            status, body = 401, {"error": "Invalid credentials in Authorization header"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeHub.valid_token = "hf_" + secrets.token_hex(17)
    FakeHub.seen_authorizations = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hub_env(endpoint: str, token: str) -> dict:
    # The login cell checks the token against the Hub at HF_ENDPOINT: here a server on loopback.
    return kernel_env(HF_TOKEN=token, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")


def test_login_uses_the_token_without_ever_showing_it(fake_hub, tmp_path):
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4))
    login_index = cell_index(notebook, "HfApi().whoami")
    run_cells(notebook, login_index, tmp_path, hub_env(fake_hub, FakeHub.valid_token))
    text = cell_text(notebook.cells[login_index])
    assert "Logged in to the Hub as kaggle-user with the HF_TOKEN environment variable" in text
    assert "the model will go to kaggle-user/distrinews-ag-news" in text
    assert FakeHub.seen_authorizations == [f"Bearer {FakeHub.valid_token}"]
    assert FakeHub.valid_token not in json.dumps(notebook)


def test_rejected_token_stops_before_training_without_showing_it(fake_hub, tmp_path):
    rejected = "hf_" + secrets.token_hex(17)
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4))
    login_index = cell_index(notebook, "HfApi().whoami")
    with pytest.raises(CellExecutionError, match="the Hub did not accept the token from the HF_TOKEN environment"):
        run_cells(notebook, login_index, tmp_path, hub_env(fake_hub, rejected))
    assert FakeHub.seen_authorizations == [f"Bearer {rejected}"]
    assert rejected not in json.dumps(notebook)


def test_with_a_token_a_full_run_keeps_its_checkpoint_on_the_hub(fake_hub, tmp_path):
    # The command line is what matters here: training then stops at once on data that does not exist.
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), DATASET=str(tmp_path / "no-such-data"),
                               OUTPUT_DIR=str(tmp_path / "run"))
    train_index = training_cell_index(notebook)
    with pytest.raises(CellExecutionError, match=r"training failed with exit code [1-9]"):
        run_cells(notebook, train_index, tmp_path, hub_env(fake_hub, FakeHub.valid_token))
    # distrinews launch prints the plan, then the accelerate launch command it runs.
    plan, command = cell_text(notebook.cells[train_index]).splitlines()[:2]
    assert plan.startswith("no GPU found") and " -m accelerate.commands.launch --config_file " in command
    assert command.endswith("--resume auto --hub_strategy checkpoint --hub_model_id kaggle-user/distrinews-ag-news")
    assert FakeHub.valid_token not in json.dumps(notebook)
