"""The Hub's listeners on the training loop (``distrinews.training.callbacks``): checkpoints on the Hub and the push.

    hub_callbacks(config)   # what the training entry points hand the loop: [] when the config asks nothing of the Hub

``HubCheckpoints`` (``hub_strategy=checkpoint``) fetches the newest checkpoint when a run with ``resume=auto`` has
none locally, and uploads each new one in the background (``distrinews.hub.checkpoints``); ``PushAtEnd``
(``push_to_hub``) pushes the finished run after the last collective, so a slow or failed upload cannot keep the
other ranks waiting in a barrier. Both act on the main process only.
"""

from __future__ import annotations

import functools
from pathlib import Path

from huggingface_hub.utils import disable_progress_bars

from ..training import checkpoint
from ..training.callbacks import TrainerCallback
from .checkpoints import CheckpointUploader, HubCheckpointRepo
from .push import check_push_ready, push_run_to_hub, resolve_hub_token

# How long the main process waits at the end for the last checkpoint upload. At a stop (SIGTERM) the launcher may
# kill it sooner: torchrun gives the remaining processes 30 s once one has exited.
UPLOAD_WAIT_SECONDS = 900


def hub_callbacks(config) -> list[TrainerCallback]:
    """The listeners ``config`` asks for; fails now (no token, HF_HUB_OFFLINE), not after hours of training."""
    callbacks: list[TrainerCallback] = []
    if config.hub_strategy == "checkpoint":
        check_push_ready("hub_strategy=checkpoint")
        callbacks.append(HubCheckpoints(config))
    if config.push_to_hub:
        check_push_ready("push_to_hub")
        callbacks.append(PushAtEnd(config))
    return callbacks


class HubCheckpoints(TrainerCallback):
    """Each newest checkpoint to ``hub_model_id``'s ``last-checkpoint/``; fetched back by a run that has none."""

    def __init__(self, config) -> None:
        self.config = config
        self.repo: HubCheckpointRepo | None = None
        self.uploader: CheckpointUploader | None = None

    def on_train_begin(self, run) -> None:
        if not run.accelerator.is_main_process:
            return
        say = functools.partial(print, flush=True)  # from the upload thread too, and promptly (Kaggle shows stdout)
        # Upload progress bars from the background thread would tear the training progress bar apart; each upload
        # says in one line what it did instead.
        disable_progress_bars()
        config = self.config
        self.repo = HubCheckpointRepo(config.hub_model_id, resolve_hub_token(), revision=config.hub_revision or None,
                                      private=config.hub_private, log=say)
        self.uploader = CheckpointUploader(self.repo.upload, self.repo.where, log=say)
        # Every rank of this config waits after this hook, so none races past a download in progress; a failed
        # fetch ends the main process, and the launcher the rest.
        if config.resume == "auto" and checkpoint.latest_checkpoint(run.checkpoint_root) is None:
            self.repo.fetch(run.checkpoint_root, run.output_dir / "log.jsonl")

    def on_checkpoint(self, run, folder: Path) -> None:
        """Hand the checkpoint to the background uploader (a snapshot of hard links: see snapshot_for_upload)."""
        try:
            snapshot = checkpoint.snapshot_for_upload(folder, run.output_dir / "log.jsonl")
        except OSError as err:
            print(f"Warning: checkpoint {folder} not uploaded, its snapshot failed ({err}); training goes on",
                  flush=True)
            return
        self.uploader.submit(snapshot, run.state.global_step)

    def on_stop(self, run) -> None:
        self._wait_for_uploads()

    def on_train_end(self, run, metrics: dict) -> None:
        self._wait_for_uploads()

    def _wait_for_uploads(self) -> None:
        """The newest checkpoint on the Hub before the process ends (main process; bounded)."""
        if self.uploader is not None:
            self.uploader.close(UPLOAD_WAIT_SECONDS)


class PushAtEnd(TrainerCallback):
    """``distrinews push`` of the finished run, by the main process."""

    def __init__(self, config) -> None:
        self.config = config

    def on_train_end(self, run, metrics: dict) -> None:
        if run.accelerator.is_main_process:
            config = self.config
            metrics["hub"] = push_run_to_hub(run.output_dir, config.hub_model_id, private=config.hub_private,
                                             revision=config.hub_revision or None, log=run.accelerator.print)
