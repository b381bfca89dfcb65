"""The Kaggle bundle, and the wheel in it installed into a fresh virtual environment the way a Kaggle session does.

    python -m pytest tests/end_to_end/test_kaggle_bundle.py -q -s     # -s prints the venv and notebook timings

The bundle is built by the real ``distrinews kaggle`` command and read by the official kaggle client's own
``kernels_push`` and ``dataset_create_new`` (only the HTTP client at their end is replaced by a recorder).
Then a fresh venv (no system site-packages, no PYTHONPATH; torch, ipykernel and the other packages a Kaggle image
already holds preinstalled, at this suite's versions) runs the notebook headlessly, with the bundle's dataset
folder where Kaggle mounts attached datasets: the notebook must install the wheel from there (pip adds what the
image lacks), and train through it in SMOKE mode. The CLI installed by
the wheel is checked in the same venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from kaggle.api.kaggle_api_extended import KaggleApi
from kagglesdk.datasets.types.dataset_api_service import ApiCreateDatasetResponse
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from requests.exceptions import HTTPError

from conftest import REPO_ROOT
from distrinews.cli import COMMANDS
from distrinews.kaggle import bundle as kaggle_bundle
from distrinews.launch.configs import launch_config_path
from test_notebook import cell_index, cell_text, training_cell_index, with_parameters
from venvs import Venv, make_image_venv

NOTEBOOK = REPO_ROOT / "notebooks" / "distrinews_kaggle.ipynb"
DATASET, KERNEL = "jane/distrinews-wheel", "jane/news-on-two-t4"


def source_env() -> dict:
    """This checkout's distrinews, for the ``distrinews kaggle`` command run from a clone."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def run_distrinews(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distrinews", *args], cwd=cwd, env=source_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("bundle") / "kaggle-bundle"
    result = run_distrinews("kaggle", "--output", str(output), "--dataset", DATASET, "--kernel", KERNEL,
                            cwd=output.parent)
    assert result.returncode == 0, result.stderr
    assert f"kaggle datasets create -p {output / 'dataset'}\n" in result.stdout
    assert f"kaggle kernels push -p {output / 'kernel'} --no-run\n" in result.stdout
    return output


def only_wheel(folder: Path) -> Path:
    wheels = list(folder.glob("distrinews-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_bundle_holds_the_wheel_the_notebook_and_their_metadata(bundle):
    assert sorted(path.name for path in bundle.iterdir()) == ["dataset", "kernel"]
    wheel = only_wheel(bundle / "dataset")
    assert sorted(path.name for path in (bundle / "dataset").iterdir()) == sorted(["dataset-metadata.json", wheel.name])
    assert sorted(path.name for path in (bundle / "kernel").iterdir()) == ["distrinews_kaggle.ipynb",
                                                                          "kernel-metadata.json"]
    assert (bundle / "kernel" / "distrinews_kaggle.ipynb").read_bytes() == NOTEBOOK.read_bytes()
    kernel = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["dataset_sources"] == [DATASET] and kernel["machine_shape"] == "NvidiaTeslaT4"
    assert kernel["enable_gpu"] is kernel["enable_internet"] is kernel["is_private"] is True


class RecordingKaggleClient:
    """Stands in for kagglesdk's HTTP client at the end of the kaggle client's own code: keeps the requests."""

    def __init__(self):
        self.requests = []
        self.kernels = self.datasets = self
        self.kernels_api_client = self.dataset_api_client = self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def save_kernel(self, request):
        self.requests.append(request)
        return request

    def create_dataset(self, request):
        self.requests.append(request)
        response = ApiCreateDatasetResponse()
        response.error = ""
        return response


@pytest.fixture()
def kaggle_api(monkeypatch) -> tuple[KaggleApi, RecordingKaggleClient]:
    api, client = KaggleApi(), RecordingKaggleClient()
    api.config_values = {KaggleApi.CONFIG_NAME_USER: "jane"}
    monkeypatch.setattr(api, "build_kaggle_client", lambda: client)
    return api, client


def test_kaggle_client_pushes_the_kernel_on_two_t4_with_the_dataset_attached(bundle, kaggle_api, capsys):
    api, client = kaggle_api
    api.kernels_push(str(bundle / "kernel"), no_run=True)
    assert "does not resolve to the specified id" not in capsys.readouterr().out  # title and slug agree
    (request,) = client.requests
    assert request.slug == KERNEL and request.language == "python" and request.kernel_type == "notebook"
    assert request.machine_shape == "NvidiaTeslaT4" and request.enable_gpu and not request.enable_tpu
    assert request.enable_internet and request.is_private
    assert request.dataset_data_sources == [DATASET]
    sent = json.loads(request.text)
    assert [cell["source"] for cell in sent["cells"]] == [cell.source for cell in nbformat.read(NOTEBOOK, 4).cells]


def test_kaggle_client_creates_the_dataset_with_the_wheel(bundle, kaggle_api, monkeypatch):
    api, client = kaggle_api
    uploaded = []

    def not_found(ref, *args, **kwargs):
        raise HTTPError(f"404: {ref} does not exist yet")

    def record_upload(folder, file_name, *args, **kwargs):
        uploaded.append(file_name)  # the file the client would upload; None: added to no request

    monkeypatch.setattr(api, "dataset_status", not_found)
    monkeypatch.setattr(api, "_upload_file_or_folder", record_upload)
    api.dataset_create_new(str(bundle / "dataset"))  # raises ValueError on a title, slug or license it refuses
    (request,) = client.requests
    assert (request.owner_slug, request.slug) == tuple(DATASET.split("/"))
    assert request.license_name == "apache-2.0" and request.is_private
    assert uploaded == [only_wheel(bundle / "dataset").name]


@pytest.mark.parametrize("option, value, problem", [
    ("--dataset", "distrinews-wheel", "must be USER/SLUG"),
    ("--dataset", "jane/distrinews/wheel", "must be USER/SLUG"),
    ("--dataset", "Jane/distrinews-wheel", "the user 'Jane' must be lowercase"),
    ("--dataset", "jane/distrinews_wheel", "the slug 'distrinews_wheel' must be lowercase letters and digits"),
    ("--dataset", "jane/wheel", "the slug 'wheel' has 5 characters; Kaggle takes 6 to 50"),
    ("--dataset", "jane/-wheels", "the slug '-wheels' must be"),
    ("--kernel", "jane/Run All", "the slug 'Run All' must be"),
])
def test_bad_names_are_refused_before_anything_is_written(tmp_path, option, value, problem):
    names = {"--dataset": DATASET, option: value}
    result = run_distrinews("kaggle", "--output", str(tmp_path / "out"), *(part for item in names.items()
                                                                          for part in item), cwd=tmp_path)
    assert result.returncode == 2
    assert f"error: {option} {value!r}: {problem}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_not_empty_is_left_alone(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = run_distrinews("kaggle", "--output", str(tmp_path / "out"), "--dataset", DATASET, cwd=tmp_path)
    assert result.returncode == 2 and f"--output {tmp_path / 'out'} is not an empty folder" in result.stderr
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_a_failure_midway_leaves_nothing_behind(bundle, tmp_path, monkeypatch):
    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(kaggle_bundle, "kernel_metadata", broken)  # after the wheel and notebook are copied
    with pytest.raises(OSError, match="disk full"):
        kaggle_bundle.write_bundle(tmp_path / "out", DATASET, wheel=only_wheel(bundle / "dataset"))
    assert list(tmp_path.iterdir()) == []


def test_a_given_wheel_is_shipped_as_it_is(bundle, tmp_path):
    wheel = only_wheel(bundle / "dataset")
    result = run_distrinews("kaggle", "--output", str(tmp_path / "out"), "--dataset", DATASET, "--wheel",
                            str(wheel), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "dataset" / wheel.name).read_bytes() == wheel.read_bytes()
    result = run_distrinews("kaggle", "--output", str(tmp_path / "other"), "--dataset", DATASET, "--wheel",
                            str(tmp_path / "nothing.whl"), cwd=tmp_path)
    assert result.returncode == 2 and f"--wheel {tmp_path / 'nothing.whl'}: no such file" in result.stderr


# --- the wheel in a fresh virtual environment ---------------------------------------------------------------


# What a Kaggle GPU image already holds of the wheel's dependencies, at the versions this suite runs with; the
# notebook's pip install adds the rest (evaluate, onnx, onnxruntime and what they need) and the wheel itself.
KAGGLE_IMAGE_PACKAGES = ("torch", "ipykernel", "transformers", "datasets", "accelerate", "huggingface_hub",
                         "safetensors", "numpy", "matplotlib", "pyyaml", "tqdm")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    """A fresh venv (pip seeded) with the packages of a Kaggle image, preinstalled; distrinews is not in it."""
    started = time.perf_counter()
    venv = make_image_venv(tmp_path_factory.mktemp("venv") / "env", KAGGLE_IMAGE_PACKAGES)
    print(f"\nfresh venv with {', '.join(KAGGLE_IMAGE_PACKAGES)}: {time.perf_counter() - started:.0f} s")
    return venv


def venv_kernel(venv: Venv, spec_dir: Path) -> KernelManager:
    """A KernelManager that starts the venv's python as the notebook kernel (a kernelspec of its own)."""
    kernel_dir = spec_dir / "kernels" / "distrinews-venv"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(venv.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "distrinews venv", "language": "python"}))
    return KernelManager(kernel_name="distrinews-venv",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir / "kernels")]))


def execute(notebook, venv: Venv, working_dir: Path, spec_dir: Path, upto: int | None = None) -> None:
    """Run the cells (all, or 0..upto) in one kernel of the venv, as Run all does; raises on a failing cell."""
    manager = venv_kernel(venv, spec_dir)
    client = NotebookClient(notebook, km=manager, timeout=600, resources={"metadata": {"path": str(working_dir)}})
    try:
        with client.setup_kernel(env=venv.env):
            for index, cell in enumerate(notebook.cells[: None if upto is None else upto + 1]):
                client.execute_cell(cell, index)
    finally:
        if manager.has_kernel:  # nbclient shuts down only the kernels of managers it made itself
            manager.shutdown_kernel(now=True)


def cell_seconds(cell) -> float:
    """How long a cell ran, from the timestamps nbclient records in its metadata."""
    timing = cell.metadata.execution
    return (datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            - datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))).total_seconds()


@dataclass
class NotebookRuns:
    nothing_attached: nbformat.NotebookNode  # run before the install: no wheel, no source
    nothing_attached_error: str
    attached: nbformat.NotebookNode  # Run all with the bundle's dataset where Kaggle mounts it
    run_dir: Path
    input_root: Path
    seconds: float


@pytest.fixture(scope="module")
def notebook_runs(venv, bundle, tiny_model, ag_news_dir, tmp_path_factory) -> NotebookRuns:
    working_dir = tmp_path_factory.mktemp("kaggle-working")
    spec_dir = tmp_path_factory.mktemp("kernelspecs")
    input_root = tmp_path_factory.mktemp("kaggle-input")
    source = nbformat.read(NOTEBOOK, as_version=4)

    # First, with nothing attached (an empty input root) and no DISTRINEWS_SOURCE: the install cell must stop.
    bare = with_parameters(source, KAGGLE_INPUT=str(input_root))
    with pytest.raises(CellExecutionError) as stopped:
        execute(bare, venv, working_dir, spec_dir, upto=cell_index(bare, "ATTACHED_WHEELS"))

    # Then the dataset attached as Kaggle mounts it: /kaggle/input/<slug>/<its files>.
    shutil.copytree(bundle / "dataset", input_root / "distrinews-wheel")
    notebook = with_parameters(source, KAGGLE_INPUT=str(input_root), MODEL_ID=str(tiny_model),
                               DATASET=str(ag_news_dir), OUTPUT_DIR=str(working_dir / "runs" / "ag_news"),
                               SMOKE=True, BATCH_SIZE=8, LEARNING_RATE=5e-3, CHECKPOINT_EVERY=10)
    started = time.perf_counter()
    execute(notebook, venv, working_dir, spec_dir)
    seconds = time.perf_counter() - started
    install = cell_seconds(notebook.cells[cell_index(notebook, "ATTACHED_WHEELS")])
    print(f"\nnotebook run through the wheel install in the fresh venv (SMOKE, 2 CPU processes): {seconds:.0f} s, "
          f"{install:.0f} s of it the install cell (pip install of the wheel and its dependencies)")
    return NotebookRuns(bare, str(stopped.value), notebook, working_dir / "runs" / "ag_news-smoke", input_root,
                        seconds)


def test_notebook_without_wheel_or_source_says_what_to_attach(notebook_runs):
    message = notebook_runs.nothing_attached_error
    assert f"DistriNews is not installed and there is no wheel under {notebook_runs.input_root}" in message
    assert "attach the dataset made by `distrinews kaggle`" in message and "DISTRINEWS_SOURCE" in message


def test_notebook_installs_the_attached_wheel_and_imports_it_from_the_venv(notebook_runs, venv):
    notebook = notebook_runs.attached
    install_text = cell_text(notebook.cells[cell_index(notebook, "ATTACHED_WHEELS")])
    wheel = only_wheel(notebook_runs.input_root / "distrinews-wheel")
    assert f"Installing DistriNews from the attached dataset: {wheel}" in install_text
    assert "already importable" not in install_text
    assert f"distrinews 0.1.0 ({venv.site_packages / 'distrinews'}), python" in install_text
    assert str(REPO_ROOT) not in install_text


def test_notebook_trains_and_reports_through_the_installed_package(notebook_runs, venv):
    notebook = notebook_runs.attached
    errors = [(i, output.ename) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors
    train_text = cell_text(notebook.cells[training_cell_index(notebook)])
    assert f"--config_file {venv.site_packages / 'distrinews'}" in train_text  # the configs shipped in the wheel
    assert "--hub_strategy" not in train_text  # no token: no checkpoint uploads
    assert train_text.count("test accuracy") == 1
    metrics = json.loads((notebook_runs.run_dir / "metrics.json").read_text())
    assert metrics["train"]["num_processes"] == 2
    text = "\n".join(cell_text(cell) for cell in notebook.cells)
    assert f"Not pushed. The model is in {(notebook_runs.run_dir / 'model').resolve()}" in text


def test_installed_cli_runs_every_command(notebook_runs, venv, tmp_path):
    # After the notebook's install, as a user's shell would find it: the venv's bin/distrinews.
    distrinews = str(venv.root / "bin" / "distrinews")
    version = venv.run(distrinews, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == "distrinews 0.1.0"
    overview = venv.run(distrinews, "--help", cwd=tmp_path)
    assert overview.returncode == 0
    listed = re.findall(r"^  (\S+)  ", overview.stdout.split("commands:")[1].split("options:")[0], flags=re.MULTILINE)
    assert listed == list(COMMANDS)
    for name in listed:
        result = venv.run(distrinews, name, "--help", cwd=tmp_path)
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert f"usage: distrinews {name}" in result.stdout
    where = venv.run(str(venv.python), "-c", "import distrinews; print(distrinews.__file__)",
                     cwd=tmp_path)
    assert Path(where.stdout.strip()).parent == venv.site_packages / "distrinews"


def test_installed_cli_finds_the_launch_configs_in_the_wheel(notebook_runs, venv, tmp_path):
    result = venv.run(str(venv.root / "bin" / "distrinews"), "launch-config", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.is_file() and path.is_relative_to(venv.site_packages / "distrinews")
    assert path.read_text() == launch_config_path("cpu").read_text()  # the same file as in this checkout


def test_installed_package_makes_a_bundle_from_a_given_wheel(bundle, notebook_runs, venv, tmp_path):
    distrinews = str(venv.root / "bin" / "distrinews")
    refused = venv.run(distrinews, "kaggle", "--output", str(tmp_path / "out"), "--dataset", DATASET, cwd=tmp_path)
    assert refused.returncode == 2
    assert f"distrinews is installed at {venv.site_packages / 'distrinews'}, not run from a source checkout" in refused.stderr
    assert "pass --wheel" in refused.stderr and not (tmp_path / "out").exists()
    wheel = only_wheel(bundle / "dataset")
    made = venv.run(distrinews, "kaggle", "--output", str(tmp_path / "out"), "--dataset", DATASET,
                    "--wheel", str(wheel), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "out/dataset" / wheel.name).read_bytes() == wheel.read_bytes()
    # The notebook the wheel carries is the checkout's.
    assert (tmp_path / "out/kernel/distrinews_kaggle.ipynb").read_bytes() == NOTEBOOK.read_bytes()
