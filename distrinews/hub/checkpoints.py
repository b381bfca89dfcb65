"""Checkpoints on the Hub (``hub_strategy=checkpoint``), so that a run continues on another machine or in a new
Kaggle session: each newest complete checkpoint goes to the folder ``last-checkpoint/`` of the model repo
``hub_model_id`` (the HF Trainer's name and place), and a run with ``resume=auto`` and no local checkpoint fetches
it back and resumes from it exactly as from a local one.

    accelerate launch ... -m distrinews.train --hub_strategy checkpoint --hub_model_id USER/NAME

Uploads run on the main process in one background thread (``CheckpointUploader``): the training steps and the
other ranks never wait for the network. At most one upload is in flight; a checkpoint still waiting when a newer
one arrives is skipped. A failed upload prints a warning and training goes on; the next checkpoint tries again.
Each checkpoint is one commit that touches ``last-checkpoint/`` only (the final model push leaves that folder
alone), so the repo never holds half of one checkpoint next to half of another. The token comes from where
``distrinews push`` finds it (``resolve_hub_token``) and is never printed.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from .. import __version__
from ..core.errors import CheckpointDownloadError, HubPushError
from ..training import checkpoint
from .push import HUB_CHECKPOINT_FOLDER as CHECKPOINT_FOLDER
from .push import TRANSPORT_ERRORS, check_repo_id, retry_hub_call

UPLOAD_ATTEMPTS = 3  # a transient failure is retried a little; after that the next checkpoint is the retry
_DOWNLOAD_FOLDER = ".staging-hub-download"  # under checkpoints/: a leftover goes with remove_stale_staging


class HubCheckpointRepo:
    """Where checkpoints go: ``last-checkpoint/`` of ``repo_id`` on ``revision`` (default: main)."""

    def __init__(self, repo_id: str, token: str, *, revision: str | None = None, private: bool = False,
                 log: Callable[[str], None] = print) -> None:
        check_repo_id(repo_id, "hub_model_id")
        self.repo_id, self.revision, self.private, self._log = repo_id, revision or None, private, log
        self._token = token
        self._api = HfApi(token=token, library_name="distrinews", library_version=__version__)
        self._repo_ready = False

    @property
    def where(self) -> str:
        return f"{self.repo_id}/{CHECKPOINT_FOLDER}" + (f" (branch {self.revision})" if self.revision else "")

    def upload(self, folder: Path, step: int) -> str:
        """Make ``last-checkpoint/`` hold exactly ``folder``, in one commit; return the commit's id."""
        later = "Training goes on; the next checkpoint is uploaded again."
        return retry_hub_call(lambda: self._commit(folder, step), self.repo_id, later, UPLOAD_ATTEMPTS,
                              backoff_seconds=2.0, log=self._log)

    def _commit(self, folder: Path, step: int) -> str:
        if not self._repo_ready:
            self._api.create_repo(self.repo_id, private=self.private, exist_ok=True)
            if self.revision:
                self._api.create_branch(self.repo_id, branch=self.revision, exist_ok=True)
            self._repo_ready = True
        added = {f"{CHECKPOINT_FOLDER}/{path.relative_to(folder).as_posix()}": path
                 for path in sorted(folder.rglob("*")) if path.is_file()}
        # Files of the previous checkpoint that this one lacks (another process count's RNG states, say) are
        # deleted in the same commit. create_commit, not upload_folder: with Xet, upload_folder may split a slow
        # upload into several commits, and a download between two of them would mix two checkpoints.
        stale = [name for name in self._api.list_repo_files(self.repo_id, revision=self.revision)
                 if name.startswith(f"{CHECKPOINT_FOLDER}/") and name not in added]
        operations = [*(CommitOperationDelete(path_in_repo=name) for name in stale),
                      *(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                        for name, path in added.items())]
        commit = self._api.create_commit(self.repo_id, operations=operations, revision=self.revision,
                                         commit_message=f"Checkpoint at step {step}",
                                         commit_description="The newest complete training checkpoint, to resume from "
                                                            "(distrinews train --hub_strategy checkpoint).")
        return commit.oid

    def fetch(self, checkpoint_root: Path, run_log: Path) -> Path | None:
        """Download ``last-checkpoint/`` into ``checkpoint_root`` as a resumable checkpoint; None when there is none.

        A repo, branch or folder that does not exist yet means a first run: it starts from scratch. Anything else
        (no access, no network) is an error, since starting over would replace the checkpoint on the Hub.
        """
        download = checkpoint_root / _DOWNLOAD_FOLDER
        shutil.rmtree(download, ignore_errors=True)
        log = self._log
        log(f"No local checkpoint: looking for one in {self.where} ...")
        try:
            # Only the files a checkpoint holds: anything else in the folder is never fetched, let alone loaded.
            wanted = [f"{CHECKPOINT_FOLDER}/{name}" for name in checkpoint.CHECKPOINT_FILE_PATTERNS]
            snapshot_download(self.repo_id, revision=self.revision, allow_patterns=wanted,
                              local_dir=download, token=self._token, library_name="distrinews",
                              library_version=__version__)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            log(f"No checkpoint on the Hub: {self.repo_id}" + (f" has no branch {self.revision}" if self.revision
                else " does not exist (or this token cannot see it)") + " yet; starting from scratch")
            return None
        except (HfHubHTTPError, *TRANSPORT_ERRORS) as err:
            shutil.rmtree(download, ignore_errors=True)
            raise CheckpointDownloadError(
                f"could not fetch the newest checkpoint from {self.where}: {_problem(err)}. Check the network and "
                "that the token may read the repo, then run the same command again; or start over with --resume "
                "none (the first new checkpoint then replaces the one on the Hub).") from None
        if not (download / CHECKPOINT_FOLDER).is_dir():
            shutil.rmtree(download, ignore_errors=True)
            log(f"No checkpoint on the Hub: {self.repo_id} has no {CHECKPOINT_FOLDER}/ folder yet; "
                "starting from scratch")
            return None
        try:  # the download is checked again as it landed (a pattern's * also matches a subfolder)
            installed = checkpoint.install_downloaded_checkpoint(download / CHECKPOINT_FOLDER, checkpoint_root, run_log,
                                                                 source=self.where)
        finally:
            shutil.rmtree(download, ignore_errors=True)
        log(f"Fetched {installed.name} from {self.where} into {installed}")
        return installed


def _problem(err: Exception) -> str:
    # The status and the first line of what went wrong; never request headers (they carry the token).
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        return f"HTTP {status}: {str(err).splitlines()[0]}"
    return f"{type(err).__name__}: {err}"


class CheckpointUploader:
    """One background thread that uploads the newest submitted checkpoint snapshot, skipping superseded ones.

    ``upload(snapshot, step)`` does the upload and returns a commit id; ``log`` says what happened (and
    warns); each snapshot folder is deleted once uploaded, failed or skipped.
    """

    def __init__(self, upload: Callable[[Path, int], str], where: str, log: Callable[[str], None] = print) -> None:
        self._upload, self._where, self._log = upload, where, log
        self._condition = threading.Condition()
        self._waiting: tuple[Path, int] | None = None
        self._in_flight: int | None = None  # the step being uploaded
        self._closing = False
        self.uploaded: list[int] = []  # steps, in order
        self.skipped: list[int] = []
        self.failed: list[int] = []
        # A daemon: a hung upload must not keep a finished (or failed) run's process alive.
        self._thread = threading.Thread(target=self._work, name="hub-checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, snapshot: Path, step: int) -> None:
        """Queue ``snapshot`` (its own folder, handed over to the uploader); replaces one still waiting."""
        with self._condition:
            if self._closing:
                raise RuntimeError("the uploader is closed")
            if self._waiting is not None:
                superseded, old_step = self._waiting
                shutil.rmtree(superseded, ignore_errors=True)
                self.skipped.append(old_step)
                self._log(f"Checkpoint upload: step {old_step} skipped, superseded by step {step}")
            self._waiting = (snapshot, step)
            self._condition.notify_all()

    def close(self, timeout: float) -> bool:
        """Upload what is waiting, then stop; wait at most ``timeout`` seconds. Returns whether all is done."""
        with self._condition:
            self._closing = True
            busy = self._in_flight if self._in_flight is not None else (self._waiting or (None, None))[1]
            self._condition.notify_all()
        if busy is not None:
            self._log(f"Waiting for the checkpoint upload of step {busy} to {self._where} (at most {timeout:g} s) ...")
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._condition:
                step = self._in_flight if self._in_flight is not None else busy
            self._log(f"Warning: the checkpoint upload of step {step} did not finish within {timeout:g} s; "
                      f"{self._where} keeps the checkpoint uploaded before it")
            return False
        return True

    def _work(self) -> None:
        while True:
            with self._condition:
                while self._waiting is None and not self._closing:
                    self._condition.wait()
                if self._waiting is None:
                    return  # closing, nothing left
                (snapshot, step), self._waiting = self._waiting, None
                self._in_flight = step
            self._upload_one(snapshot, step)
            with self._condition:
                self._in_flight = None

    def _upload_one(self, snapshot: Path, step: int) -> None:
        started = time.perf_counter()
        try:
            commit = self._upload(snapshot, step)
        except Exception as err:  # noqa: BLE001 - whatever broke one upload, training goes on
            self.failed.append(step)
            message = str(err) if isinstance(err, HubPushError) else _problem(err)
            self._log(f"Warning: could not upload the checkpoint of step {step} to {self._where}: {message}")
        else:
            self.uploaded.append(step)
            self._log(f"Uploaded the checkpoint of step {step} to {self._where} in "
                      f"{time.perf_counter() - started:.1f} s (commit {commit})")
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
