"""Push a finished run's ``model/`` (weights, config, tokenizer, model card, plots) to the Hugging Face Hub.

    distrinews push runs/ag_news --repo_id USER/NAME [--private] [--revision BRANCH]
    accelerate launch ... -m distrinews.train --push_to_hub --hub_model_id USER/NAME     # push at the end of training

The token comes from ``HF_TOKEN``, the token stored by ``hf auth login`` (``huggingface-cli login``), or on
Kaggle a secret named ``HF_TOKEN``. It is handed to ``huggingface_hub`` and nowhere else: never printed,
logged or written into the run folder. The push is one commit; transient failures (HTTP 408/429/5xx,
dropped connections) are retried with exponential backoff, and retrying is safe because the Hub skips
files whose content it already has, so a repeated attempt cannot add a second, different commit.
"""

from __future__ import annotations

import glob
import importlib
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import filter_repo_objects

from .. import __version__
from ..training.model_card import write_model_card
from ..core.atomic import write_json
from ..core.errors import HubInputError, HubPushError, ModelCardError
from ..core.formats import AG_NEWS, dataset_display_name, preset_named
from ..serving.export import SHIPPED_FILES, SHIPPED_FOLDER, export_serving_graph
from ..training.reporting import HEADLINE_METRICS

TRANSIENT_STATUS_CODES = (408, 429, 500, 502, 503, 504)
# Weights from an earlier push that this commit does not overwrite would be loaded instead of (or mixed
# with) the new ones, e.g. an old shard index next to a new single file; the commit deletes them, and the
# int8 graph of those weights (SHIPPED_FILES) with them. Other files in onnx/ (a transformers.js export, say)
# are the user's and stay.
STALE_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.h5",
                         "*.msgpack"]
# The staging folders of an export killed halfway (serving/export.py writes beside onnx/ under a hidden name):
# half-written files that are never uploaded.
EXPORT_LEFTOVERS = [f".{SHIPPED_FOLDER}.*"]
# The resumable checkpoint of hub_strategy=checkpoint (distrinews/hub/checkpoints.py) lives here; a model push
# leaves it alone, and a checkpoint upload touches nothing else.
HUB_CHECKPOINT_FOLDER = "last-checkpoint"


def _transport_errors() -> tuple[type[Exception], ...]:
    # huggingface_hub speaks HTTP through httpx2 (2.x, whenever it is installed) or httpx (1.x); a dropped
    # connection raises the TransportError of whichever it uses. Only that one is imported: importing httpx also
    # imports its command-line client (rich, pygments), 0.4 s of every process that pushes or trains.
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name).TransportError, ConnectionError, TimeoutError
        except ImportError:
            continue
    return ConnectionError, TimeoutError


TRANSPORT_ERRORS = _transport_errors()


def resolve_hub_token() -> str:
    """The token to push with: HF_TOKEN, else the stored login token, else a Kaggle secret ``HF_TOKEN``."""
    token = get_token() or _kaggle_secret("HF_TOKEN")
    if not token:
        raise HubInputError("no Hugging Face token found: run `hf auth login` (or `huggingface-cli login`), set "
                           "HF_TOKEN, or on Kaggle add a secret named HF_TOKEN. Use a token with write access.")
    return token


def check_repo_id(repo_id: str, what: str = "repo id") -> None:
    """Refuse anything but USER/NAME before a request is made (the Hub's own error would come after the upload)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or ".." in repo_id:
        raise HubInputError(f"{what} {repo_id!r} must look like USER/NAME (letters, digits, '-', '_', '.')")


def check_push_ready(setting: str = "push_to_hub") -> None:
    """Fail before training, not after it, when a push (``setting`` asks for it) cannot work."""
    if constants.HF_HUB_OFFLINE:
        raise HubInputError(f"{setting} is set but HF_HUB_OFFLINE=1 forbids network access: unset HF_HUB_OFFLINE, "
                           f"or train without {setting} and later run `distrinews push RUN_DIR --repo_id USER/NAME` "
                           "on a machine with network access")
    resolve_hub_token()


def push_run_to_hub(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                    token: str | None = None, attempts: int = 5, backoff_seconds: float = 2.0,
                    log: Callable[[str], None] = print) -> dict:
    """Upload ``run_dir/model`` to ``repo_id`` in one commit; record and return the commit's sha and URL.

    The model card is rewritten first (so its usage snippet names ``repo_id``). The result is also stored
    as the ``hub`` section of ``run_dir/metrics.json``.
    """
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    check_repo_id(repo_id)
    if not (model_dir / "config.json").is_file() or not list(model_dir.glob("*.safetensors")):
        raise HubInputError(f"{model_dir} holds no saved model (config.json and *.safetensors): "
                           "is RUN_DIR the output_dir of a finished training run?")
    if constants.HF_HUB_OFFLINE:
        raise HubInputError(f"HF_HUB_OFFLINE=1 forbids network access; unset it to push {run_dir}")
    token = token or resolve_hub_token()
    try:
        write_model_card(run_dir, repo_id)  # its usage snippet names the repo pushed to
    except ModelCardError as err:
        raise HubPushError(f"{err}; nothing was pushed") from None
    ship_serving_graph(model_dir, log)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    dataset = json.loads((run_dir / "train_config.json").read_text(encoding="utf-8"))["dataset"]
    api = HfApi(token=token, library_name="distrinews", library_version=__version__)

    def push_once():
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        # upload_folder makes one commit for a folder this small (the Xet pipeline batches 250 files per commit).
        commit = api.upload_folder(folder_path=model_dir, repo_id=repo_id, revision=revision,
                                   commit_message=_commit_message(metrics, dataset),
                                   commit_description=_commit_description(metrics),
                                   delete_patterns=_stale_weight_files(api, repo_id, revision),
                                   ignore_patterns=EXPORT_LEFTOVERS)
        # An existing repo keeps its visibility whatever was asked for, so read it back.
        return repo_url, commit, api.repo_info(repo_id, revision=commit.oid).private

    log(f"Pushing {model_dir} to {repo_id}" + (f" (branch {revision})" if revision else "") + " ...")
    later = f"The run is saved in {run_dir}; push it later with `distrinews push {run_dir} --repo_id {repo_id}`."
    repo_url, commit, is_private = retry_hub_call(push_once, repo_id, later, attempts, backoff_seconds, log)
    if private and not is_private:
        log(f"Warning: {repo_id} already existed as a public repo and stays public; change its visibility in "
            "the repo settings on the Hub if it should be private.")
    url = str(repo_url) if not revision else f"{repo_url}/tree/{revision}"
    record = {"repo_id": repo_id, "revision": revision or "main", "commit_sha": commit.oid,
              "commit_url": commit.commit_url, "url": url, "private": is_private,
              "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    metrics["hub"] = record
    write_json(run_dir / "metrics.json", metrics)
    log(f"Pushed to {url} in commit {commit.oid} ({commit.commit_url})")
    return record


def _stale_weight_files(api: HfApi, repo_id: str, revision: str | None) -> list[str] | None:
    """The repo's files matching STALE_WEIGHT_PATTERNS outside last-checkpoint/ and onnx/, and its SHIPPED_FILES,
    as exact patterns (upload_folder matches its delete patterns with fnmatch, whose "*" crosses "/":
    "*.safetensors" alone would delete the checkpoint's weights too). None when there are none; a new repo has
    none. Files this commit uploads are not deleted, whatever the patterns say."""
    try:
        files = api.list_repo_files(repo_id, revision=revision)
    except RepositoryNotFoundError:
        return None
    stale = [name for name in filter_repo_objects(files, allow_patterns=STALE_WEIGHT_PATTERNS)
             if not name.startswith((f"{HUB_CHECKPOINT_FOLDER}/", f"{SHIPPED_FOLDER}/"))]
    stale += [name for name in files if name in SHIPPED_FILES]
    return [glob.escape(name) for name in stale] or None


def ship_serving_graph(model_dir: Path, log: Callable[[str], None] = print) -> Path | None:
    """Write the int8 graph the Space serves into ``model_dir/onnx/`` (unless a matching one is there), so a
    Space starts without torch and without exporting. A model the exporter cannot handle is pushed without it
    (the Space then exports at start, which needs torch there)."""
    try:
        return export_serving_graph(model_dir, log)
    except Exception as err:  # noqa: BLE001 - the weights are what matters; the graph is a start-up shortcut
        log(f"Warning: no int8 ONNX graph for the Space ({type(err).__name__}: {err}); pushing without it")
        return None


def retry_hub_call(push_once, repo_id: str, later: str, attempts: int, backoff_seconds: float, log):
    """Call ``push_once`` until it succeeds, retrying transient failures; ``later`` ends every error message
    (what the user can do next). Auth and other client errors raise HubPushError at once."""
    for attempt in range(1, attempts + 1):
        try:
            return push_once()
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status == 401:
                raise HubPushError(f"the Hub rejected the token (HTTP 401) while pushing to {repo_id}: it is missing, "
                                   "expired or invalid. Create a token with write access at "
                                   "https://huggingface.co/settings/tokens, then run `hf auth login` or set HF_TOKEN. "
                                   + later) from None
            if status == 403:
                raise HubPushError(f"the token may not write to {repo_id} (HTTP 403): use a token with the write "
                                   "role, or push to your own namespace or an organization you can write to. "
                                   + later) from None
            if status not in TRANSIENT_STATUS_CODES:
                raise HubPushError(f"the Hub refused the push to {repo_id} (HTTP {status}): "
                                   f"{_server_message(err)}. {later}") from None
            problem = f"HTTP {status}"
        except TRANSPORT_ERRORS as err:
            problem = f"{type(err).__name__}: {err}"
        if attempt == attempts:
            raise HubPushError(f"pushing to {repo_id} failed {attempts} times, last with {problem}. {later}")
        delay = min(backoff_seconds * 2 ** (attempt - 1), 60.0)
        log(f"Push attempt {attempt}/{attempts} failed ({problem}); retrying in {delay:g} s")
        time.sleep(delay)
    raise AssertionError("unreachable")


def _server_message(err: HfHubHTTPError) -> str:
    # The first line of the error plus whatever the server said; never the request headers.
    return getattr(err, "server_message", None) or str(err).splitlines()[0]


def _commit_message(metrics: dict, dataset: str) -> str:
    test = metrics["test"]
    preset = preset_named((metrics.get("data") or {"preset": AG_NEWS.key}).get("preset"))
    scores = ", ".join(f"{title} {test[key]:.4f}" for key, title in HEADLINE_METRICS if key in test)
    return f"DistriNews: {dataset_display_name(dataset, preset)} classifier, test {scores}"


def _commit_description(metrics: dict) -> str:
    train, validation = metrics["train"], metrics["validation"]
    selected = metrics.get("metric_for_best_model", "accuracy")
    return (f"Trained with DistriNews {__version__} on {train['num_processes']} process(es) "
            f"({train['hardware']}), mixed precision {train['mixed_precision']}, effective batch size "
            f"{train['total_train_batch_size']}, {metrics['global_step']} optimizer steps; weights from step "
            f"{metrics['selected_step']} ({metrics['model_selection']}), "
            + (f"validation {selected} {validation[selected]:.4f}." if validation else "no validation split."))


def _kaggle_secret(label: str) -> str | None:
    # Kaggle notebooks keep secrets behind their own client, which exists only on Kaggle.
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return None
    try:
        return UserSecretsClient().get_secret(label) or None
    except Exception:  # the client raises its own error types when the secret is not attached
        return None
