"""Fine-tune a text classifier on AG News with data-parallel training.

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m distrinews.train --output_dir runs/ag_news
    accelerate launch --config_file accelerate_configs/cpu.yaml -m distrinews.train --config my_run.yaml
    distrinews train --max_train_samples 2000 --num_train_epochs 1      # one process
    accelerate launch --config_file accelerate_configs/cpu.yaml -m distrinews.train --push_to_hub --hub_model_id USER/NAME
    accelerate launch ... -m distrinews.train --hub_strategy checkpoint --hub_model_id USER/NAME   # resume anywhere

The same file runs on CPU (gloo), one GPU, N GPUs and several machines: the accelerate YAML decides the
processes and the precision; the training config (distrinews/training/config.py) decides everything else. This is
the only module that touches the ``Accelerator``.

Run the same command again after any interruption: ``resume=auto`` continues from the newest complete
checkpoint, batch for batch; with ``hub_strategy=checkpoint`` it is also on the Hub, so a new machine or a new
Kaggle session continues the run from there (distrinews/hub/checkpoints.py). The exit codes are listed with their
errors in ``distrinews/core/errors.py``.

Read it top to bottom: ``train`` runs the phases in order: ``_set_up`` (accelerator, data, model, loaders,
optimizer), ``_start_tracking`` (report_to), ``_resume_or_start``, then ``_train_steps``, which calls
``_micro_step`` per batch and ``_after_optimizer_step`` per optimizer step (device checks, ``_log_window``,
``_evaluate_and_checkpoint``, ``_stop``), and ``_finish`` (pick the weights, evaluate test, write the outputs,
push). Everything the phases share lives in one ``Run``.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import accelerate
import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from huggingface_hub.utils import disable_progress_bars
from safetensors.torch import load_model, save_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from . import checkpoint, faults, tracking
from .checkpoint import TrainerState
from .config import TrainConfig, parse_train_config
from .cpu_dropout import use_cpu_dropout
from .data import PaddingCollator, checked_max_length, load_ag_news, sorted_by_length, tokenize_splits
from ..core.errors import EXIT_STOPPED, CheckpointWriteError, ConfigError, TrainingStopped, exit_code_for
from .evaluation import evaluate_split
from ..hub.checkpoints import CheckpointUploader, HubCheckpointRepo
from ..hub.push import check_push_ready, push_run_to_hub, resolve_hub_token
from ..core.labels import LABEL_NAMES
from ..hub.model_card import write_model_card
from ..core.modeling import load_classifier
from .optimization import parameter_settings
from .preemption import StopRequest, ignore_stop_signals
from .rdrop import rdrop_loss
from ..core.atomic import write_json
from .reporting import RunLog, plot_confusion_matrix, plot_loss
from .sampling import ResumableBatchSampler
from .stability import NonFiniteGuard

BEST_WEIGHTS = "best_model.safetensors"
# How long the main process waits at the end for the last checkpoint upload (hub_strategy=checkpoint). At a stop
# (SIGTERM) the launcher may kill it sooner: torchrun gives the remaining processes 30 s once one has exited.
UPLOAD_WAIT_SECONDS = 900


@dataclass
class LogWindow:
    """What the optimizer steps since the last log line add up to. Loss stays on the device, read only at log
    steps: reading it every step would make the CPU wait for the GPU each time."""

    loss: torch.Tensor
    tokens: int = 0
    micro_batches: int = 0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    def restart(self) -> None:
        self.loss.zero_()
        self.tokens = self.micro_batches = self.steps = 0
        self.started = time.perf_counter()


@dataclass
class Run:
    """One training run: its parts, built by ``_set_up``, and its progress, shared by the phases."""

    config: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module  # wrapped by accelerate: no_sync, unwrap and saving go through it
    forward_model: Any  # the same model, compiled where that pays
    tokenizer: Any
    tokenized: Any  # DatasetDict of the tokenized splits
    sampler: ResumableBatchSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    optimizer: Any
    scheduler: Any
    total_steps: int
    micro_batches_per_epoch: int
    state: TrainerState
    run_log: RunLog
    stop_request: StopRequest
    guard: NonFiniteGuard | None = None
    window: LogWindow | None = None
    progress: Any = None
    stop_vote: torch.Tensor | None = None  # filled, never re-created: no host-to-device copy per step
    hub_repo: HubCheckpointRepo | None = None  # hub_strategy=checkpoint, main process only
    uploader: CheckpointUploader | None = None  # the same

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def examples_per_step(self) -> int:
        return self.config.total_train_batch_size(self.accelerator.num_processes)

    @property
    def host_check_every(self) -> int:
        # The host reads the device every step on the CPU (free there) but only every logging_steps on a GPU,
        # where a read makes the CPU wait for the GPU: the non-finite run and the stop vote are read together.
        return 1 if self.device.type == "cpu" else self.config.logging_steps


def train(config: TrainConfig) -> dict:
    """Run training, pick the weights to keep and evaluate them on test; return metrics.json."""
    stop_request = StopRequest()
    try:
        run = _set_up(config, stop_request)
        try:
            _start_tracking(run)
            _resume_or_start(run)
            _train_steps(run)
            return _finish(run)
        finally:
            # However the run ends, the trackers' run is closed with what it logged. Not end_training(): after a
            # stop or a failure it would destroy the process group while another rank may still be in a
            # collective, which then fails with "Connection closed by peer" (_finish ends the group itself).
            for tracker in run.accelerator.trackers:
                tracker.finish()
            release_loader_workers([run.train_loader, *run.eval_loaders.values()])
    finally:
        stop_request.uninstall()  # no-op unless the loop was interrupted by an exception


def release_loader_workers(loaders) -> None:
    """Stop the persistent data-loading workers now, not at interpreter exit. They ignore SIGTERM
    (preemption.ignore_stop_signals), and multiprocessing's exit handler stops leftover workers with exactly that
    signal and then waits for them: a process whose loaders were still referenced at exit hung there."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # set only for persistent workers
        if iterator is not None:
            iterator._shutdown_workers()  # torch's own shutdown: asks each worker to leave, then joins it
            loader._iterator = None


# ----------------------------------------------------------------------------- setup

def _set_up(config: TrainConfig, stop_request: StopRequest) -> Run:
    accelerator = _make_accelerator(config)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on TF32 tensor cores
    set_seed(config.seed)  # before the model: the new classification head must match on every rank
    model, tokenizer, tokenized = _load_model_and_data(config, accelerator)
    # On every rank, so all fail together before training (each rank writes into checkpoints).
    checkpoint.check_output_dir(Path(config.output_dir), accelerator.process_index, keep_last=config.keep_last,
                                weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    if accelerator.is_main_process:
        checkpoint.remove_stale_staging(Path(config.output_dir) / "checkpoints")
        config.save(Path(config.output_dir) / "train_config.json")
    accelerator.wait_for_everyone()

    total_steps = config.total_steps(len(tokenized["train"]), accelerator.num_processes)
    sampler, train_loader, eval_loaders = _data_loaders(config, accelerator, tokenized, tokenizer)
    steps_per_epoch = len(sampler) // config.gradient_accumulation_steps
    optimizer = _build_optimizer(model, config, fused=accelerator.device.type in ("cuda", "cpu"))
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer,
                              num_warmup_steps=round(config.warmup_ratio * total_steps), num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by hand, once per optimizer step
    # Compile the DDP-wrapped model (as accelerate does), but keep `model` itself for no_sync, unwrap and saving.
    forward_model = torch.compile(model, dynamic=True) if _should_compile(config, accelerator.device) else model

    train_data = checkpoint.data_fingerprint(tokenized["train"]["length"], tokenized["train"]["labels"])
    state = TrainerState(run_signature=checkpoint.run_signature(config, accelerator.num_processes, train_data,
                                                                total_steps))
    hub_repo, uploader = _hub_checkpoints(config, accelerator)
    return Run(config=config, accelerator=accelerator, model=model, forward_model=forward_model, tokenizer=tokenizer,
               tokenized=tokenized, sampler=sampler, train_loader=train_loader, eval_loaders=eval_loaders,
               optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
               micro_batches_per_epoch=steps_per_epoch * config.gradient_accumulation_steps, state=state,
               run_log=RunLog(Path(config.output_dir) / "log.jsonl", enabled=accelerator.is_main_process),
               stop_request=stop_request, hub_repo=hub_repo, uploader=uploader)


def _hub_checkpoints(config: TrainConfig, accelerator: Accelerator):
    """The Hub repo and background uploader of hub_strategy=checkpoint, on the main process; (None, None) otherwise."""
    if config.hub_strategy != "checkpoint" or not accelerator.is_main_process:
        return None, None
    say = functools.partial(print, flush=True)  # from the upload thread too, and promptly (Kaggle shows stdout live)
    # Upload progress bars from the background thread would tear the training progress bar apart; each upload
    # says in one line what it did instead.
    disable_progress_bars()
    repo = HubCheckpointRepo(config.hub_model_id, resolve_hub_token(), revision=config.hub_revision or None,
                             private=config.hub_private, log=say)
    return repo, CheckpointUploader(repo.upload, repo.where, log=say)


def _make_accelerator(config: TrainConfig) -> Accelerator:
    output_dir = Path(config.output_dir)
    return Accelerator(
        log_with=tracking.trackers_for(config.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / tracking.TRACKER_FOLDER)),
        # accelerate starts several CPU processes only through torchrun (its MULTI_GPU launcher, see
        # accelerate_configs/cpu.yaml); saying "cpu" when there is no GPU makes it pick gloo for them.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        kwargs_handlers=[
            # Every parameter gets a gradient in these models, so DDP's unused-parameter search is wasted work.
            DistributedDataParallelKwargs(find_unused_parameters=False, gradient_as_bucket_view=True),
            InitProcessGroupKwargs(timeout=timedelta(seconds=config.ddp_timeout_seconds)),
        ],
    )


def _load_model_and_data(config: TrainConfig, accelerator: Accelerator):
    # Every rank validates the data itself, so a bad file fails them all at once instead of leaving
    # some waiting in a collective; nothing has been written to output_dir yet.
    splits = load_ag_news(config.dataset, validation_fraction=config.validation_fraction, seed=config.seed,
                          max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
                          headline_views=config.headline_views)
    if config.model_selection == "best_validation" and "validation" not in splits:
        raise ConfigError("model_selection=best_validation needs a validation split: set validation_fraction > 0 "
                          "or give the data a validation file")
    with accelerator.main_process_first():  # download once, then read from the cache
        model, tokenizer = load_classifier(config.model_name_or_path, for_training=True)
    config.max_length = checked_max_length(config.max_length, model, tokenizer, config.model_name_or_path,
                                           warn=accelerator.print)
    with accelerator.local_main_process_first():  # tokenize once per machine; the others hit the cache
        tokenized = tokenize_splits(splits, tokenizer, config.max_length)
    if accelerator.device.type == "cpu" and config.cpu_dropout_masks:
        accelerator.print(f"CPU dropout masks from 16-bit random numbers: {use_cpu_dropout(model)}")
    return model, tokenizer, tokenized


def _data_loaders(config: TrainConfig, accelerator: Accelerator, tokenized, tokenizer):
    device = accelerator.device
    collator = PaddingCollator(tokenizer.pad_token_id)
    sampler = ResumableBatchSampler(
        tokenized["train"]["length"], config.per_device_train_batch_size, num_replicas=accelerator.num_processes,
        rank=accelerator.process_index, seed=config.seed, group_by_length=config.group_by_length)
    train_loader = _data_loader(tokenized["train"].remove_columns("length"), collator, config, device,
                                batch_sampler=sampler)
    # Evaluation batches are sorted by length (padding is nearly free) and sharded by accelerate, whose
    # gather_for_metrics drops the duplicates it adds to even out the last batch.
    eval_loaders = {name: accelerator.prepare(_data_loader(sorted_by_length(tokenized[name]), collator, config, device,
                                                          batch_size=config.per_device_eval_batch_size))
                    for name in ("validation", "test") if name in tokenized}
    return sampler, train_loader, eval_loaders


def _start_tracking(run: Run) -> None:
    """Open the trackers' run (report_to; none: nothing) with the config as this run resolved it."""
    accelerator = run.accelerator
    resolved = {**run.config.to_dict(), "num_processes": accelerator.num_processes,
                "mixed_precision": accelerator.mixed_precision, "total_train_batch_size": run.examples_per_step,
                "total_steps": run.total_steps}
    accelerator.init_trackers(tracking.run_name(run.config), config=tracking.tracker_config(resolved))


# ----------------------------------------------------------------------------- resume or start

def _resume_or_start(run: Run) -> None:
    accelerator, config = run.accelerator, run.config
    if config.resume == "auto" and config.hub_strategy == "checkpoint":
        _fetch_hub_checkpoint(run)
    resume_from = _find_resume_checkpoint(config, run.checkpoint_root)
    if resume_from is not None:
        saved = TrainerState.load(resume_from / checkpoint.STATE_FILE)
        checkpoint.check_resumable(resume_from, saved.run_signature, run.state.run_signature)
        accelerator.load_state(str(resume_from))
        run.state = saved
        if accelerator.is_main_process:
            checkpoint.restore_best_weights(resume_from, run.output_dir / BEST_WEIGHTS)
        run.run_log.rewind(saved.global_step, checkpoint=str(resume_from))
        accelerator.print(f"Resuming from {resume_from} (step {saved.global_step}, epoch {saved.epoch}, "
                          f"batch {saved.batches_done_in_epoch} of the epoch)")
    elif accelerator.is_main_process:
        (run.output_dir / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
        (run.output_dir / BEST_WEIGHTS).unlink(missing_ok=True)
        for old in checkpoint.remove_checkpoints(run.checkpoint_root):  # only with resume=none: they would be resumed
            accelerator.print(f"resume=none: deleted {old}")
    faults.inject("start", run)
    tokenized = run.tokenized
    accelerator.print(
        f"Training {config.model_name_or_path} on {len(tokenized['train'])} examples "
        f"({len(tokenized['validation']) if 'validation' in tokenized else 'no'} validation, "
        f"{len(tokenized['test'])} test): {run.total_steps} steps of {run.examples_per_step} examples on "
        f"{accelerator.num_processes} process(es), {accelerator.device.type}, "
        f"mixed precision {accelerator.mixed_precision}")


def _fetch_hub_checkpoint(run: Run) -> None:
    """With no local checkpoint, the main process fetches the newest one from the Hub into checkpoints/ while the
    others wait (every rank of a config decides to wait, so none can race past a download in progress); then all
    resume from it as from any local checkpoint. A failed fetch ends the main process, and the launcher the rest."""
    if run.accelerator.is_main_process and checkpoint.latest_checkpoint(run.checkpoint_root) is None:
        run.hub_repo.fetch(run.checkpoint_root, run.output_dir / "log.jsonl")
    run.accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------- the steps

def _train_steps(run: Run) -> None:
    state = run.state
    run.progress = tqdm(total=run.total_steps, initial=state.global_step, desc="training", dynamic_ncols=True,
                        disable=not run.accelerator.is_main_process)
    run.window = LogWindow(loss=torch.zeros((), device=run.device))
    run.guard = NonFiniteGuard(run.optimizer.optimizer, limit=run.config.max_nonfinite_steps,
                               scaler_handles_overflow=run.accelerator.scaler is not None)
    run.stop_vote = torch.zeros((), device=run.device)
    run.stop_request.install()
    run.model.train()
    finished = False
    while not finished and state.global_step < run.total_steps:
        run.sampler.set_epoch(state.epoch, start_batch=state.batches_done_in_epoch)
        for batch in itertools.islice(run.train_loader, run.micro_batches_per_epoch - state.batches_done_in_epoch):
            if _micro_step(run, batch) and (finished := _after_optimizer_step(run)):
                break
    run.stop_request.uninstall()
    run.progress.close()


def _micro_step(run: Run, batch: dict) -> bool:
    """Forward and backward one micro-batch; the optimizer steps on the last of each accumulation. Returns
    whether it did."""
    accelerator, model = run.accelerator, run.model
    run.window.tokens += int(batch["attention_mask"].sum())  # still a CPU tensor: no device sync
    batch = {key: value.to(run.device, non_blocking=True) for key, value in batch.items()}
    with accelerator.accumulate(model):
        loss = (rdrop_loss(run.forward_model, batch, run.config.rdrop_weight) if run.config.rdrop_weight
                else run.forward_model(**batch).loss)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), run.config.max_grad_norm or math.inf)
            run.guard.step(run.optimizer.step, grad_norm)
            run.optimizer.zero_grad(set_to_none=True)
    run.window.loss += loss.detach()
    run.window.micro_batches += 1
    run.state.batches_done_in_epoch += 1
    return accelerator.sync_gradients


def _after_optimizer_step(run: Run) -> bool:
    """Bookkeeping after an optimizer step: schedule, checks, log, evaluate, checkpoint, stop. Returns whether
    training is finished."""
    state, config = run.state, run.config
    if not run.accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped the update
        run.scheduler.step()
    state.global_step += 1
    stop_agreed = state.global_step % run.host_check_every == 0 and _read_device_checks(run)
    run.window.steps += 1
    run.progress.update(1)
    epoch_finished = state.batches_done_in_epoch == run.micro_batches_per_epoch
    if epoch_finished:
        state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
    finished = state.global_step >= run.total_steps
    if state.global_step % config.logging_steps == 0 or finished:
        _log_window(run)
    checkpointed = _evaluate_and_checkpoint(run, finished, epoch_finished)
    if stop_agreed and not finished:
        _stop(run, checkpointed)
    return finished


def _read_device_checks(run: Run) -> bool:
    """Read the non-finite run and the stop vote in one device read; raise on a persistent non-finite loss.
    Returns whether any rank asked to stop (SIGTERM/SIGINT): all ranks see the all-reduced vote at the same
    step and stop together."""
    run.stop_vote.fill_(float(run.stop_request.requested))
    nonfinite_run, stop_votes = torch.stack([run.guard.consecutive.float(),
                                             run.accelerator.reduce(run.stop_vote)]).tolist()
    if nonfinite_run:
        run.run_log.write("nonfinite", step=run.state.global_step, consecutive=int(nonfinite_run))
    run.guard.raise_if_persistent(int(nonfinite_run), run.state.global_step,
                                  last_good=checkpoint.latest_checkpoint(run.checkpoint_root))
    return stop_votes > 0


def _log_window(run: Run) -> None:
    state, window, device = run.state, run.window, run.device
    totals = run.accelerator.reduce(torch.stack([window.loss, torch.tensor(float(window.tokens), device=device)]))
    elapsed = time.perf_counter() - window.started  # reduce() synchronised, so this is honest
    state.train_seconds += elapsed
    mean_loss = totals[0].item() / (window.micro_batches * run.accelerator.num_processes)
    record = dict(step=state.global_step,
                  epoch=round(state.epoch + state.batches_done_in_epoch / run.micro_batches_per_epoch, 4),
                  loss=mean_loss, lr=run.scheduler.get_last_lr()[0],
                  samples_per_s=window.steps * run.examples_per_step / elapsed,
                  examples=window.steps * run.examples_per_step, window_seconds=round(elapsed, 4),
                  tokens_per_s=totals[1].item() / elapsed)
    if device.type == "cuda":
        record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    run.run_log.write("train", **record)
    run.accelerator.log(tracking.train_scalars(record), step=state.global_step)
    run.progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}")
    window.restart()


def _evaluate_and_checkpoint(run: Run, finished: bool, epoch_finished: bool) -> bool:
    """Validate and checkpoint when due; returns whether a checkpoint was written."""
    config, step = run.config, run.state.global_step
    evaluated = checkpointed = False
    if "validation" in run.eval_loaders and (finished or epoch_finished
                                              or (config.eval_every and step % config.eval_every == 0)):
        _validate_and_select(run)
        evaluated = True
    if finished or epoch_finished or (config.checkpoint_every and step % config.checkpoint_every == 0):
        _save_checkpoint(run)
        checkpointed = True
    if evaluated or checkpointed:
        run.window.started = time.perf_counter()  # keep evaluation and I/O out of the throughput figures
    return checkpointed


def _validate_and_select(run: Run) -> None:
    state, accelerator = run.state, run.accelerator
    metrics = evaluate_split(run.model, run.eval_loaders["validation"],
                             expected_count=len(run.tokenized["validation"]), label_names=LABEL_NAMES,
                             gather=accelerator.gather_for_metrics)
    run.run_log.write("eval", split="validation", step=state.global_step, epoch=state.epoch,
                      accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
    accelerator.log(tracking.eval_scalars("eval", metrics), step=state.global_step)
    accelerator.print(f"step {state.global_step}: validation accuracy {metrics['accuracy']:.4f}, "
                      f"macro-F1 {metrics['macro_f1']:.4f}")
    # Every rank sees the same gathered metrics, so they agree on "best" without another collective.
    if run.config.model_selection == "best_validation" and metrics["accuracy"] > state.best_validation_accuracy:
        state.best_validation_accuracy, state.best_step = metrics["accuracy"], state.global_step
        with _written_on_every_rank(run, f"the best weights {run.output_dir / BEST_WEIGHTS}"):
            if accelerator.is_main_process:
                staging = run.output_dir / f".{BEST_WEIGHTS}.tmp"
                save_model(accelerator.unwrap_model(run.model), str(staging))
                staging.replace(run.output_dir / BEST_WEIGHTS)


def _save_checkpoint(run: Run) -> None:
    accelerator = run.accelerator
    staging = checkpoint.staging_dir(run.checkpoint_root, run.state.global_step)
    what = f"checkpoint {staging}"
    with _written_on_every_rank(run, what):
        accelerator.save_state(str(staging))  # every rank writes its own RNG state into the folder
        faults.inject("checkpoint_files_written", run)
    # The vote above is also the barrier: every rank's files are on disk before the marker is written.
    final = None
    with _written_on_every_rank(run, what):
        if accelerator.is_main_process:
            run.config.save(staging / "train_config.json")
            final = checkpoint.finalize_checkpoint(staging, run.state, keep_last=run.config.keep_last,
                                                   best_weights=run.output_dir / BEST_WEIGHTS)
    if final is not None and run.uploader is not None:
        _queue_upload(run, final)


@contextmanager
def _written_on_every_rank(run: Run, what: str):
    """Write run files (on some or all ranks), then all-reduce whether any rank failed, so that every rank raises
    CheckpointWriteError (exit code 4) together. A failing rank that simply left would break the others'
    next collective with "Connection closed by peer" (exit 1), and the launcher reports whichever exit it
    sees first. The vote is also a barrier."""
    error = None
    try:
        with checkpoint.write_errors_reported(what, run.checkpoint_root):
            yield
    except CheckpointWriteError as err:
        error = err
    accelerator = run.accelerator
    failed = int(accelerator.reduce(torch.tensor([float(error is not None)], device=accelerator.device)).item())
    if not failed:
        return
    run.stop_request.exit_agreed()
    raise error or checkpoint.write_failed(what, run.checkpoint_root, f"{failed} other process(es) failed to "
                                           "write their part (their error is above)")


def _queue_upload(run: Run, final: Path) -> None:
    """Hand the new checkpoint to the background uploader (a snapshot of hard links: see snapshot_for_upload)."""
    try:
        snapshot = checkpoint.snapshot_for_upload(final, run.output_dir / "log.jsonl")
    except OSError as err:
        print(f"Warning: checkpoint {final} not uploaded, its snapshot failed ({err}); training goes on", flush=True)
        return
    run.uploader.submit(snapshot, run.state.global_step)


def _wait_for_uploads(run: Run) -> None:
    """The newest checkpoint on the Hub before the process ends (main process; bounded)."""
    if run.uploader is not None:
        run.uploader.close(UPLOAD_WAIT_SECONDS)


def _stop(run: Run, checkpointed: bool) -> None:
    """Every rank agreed to stop (SIGTERM/SIGINT): make sure a checkpoint holds this step, then leave."""
    if not checkpointed:
        _save_checkpoint(run)
    step = run.state.global_step
    saved_to = run.checkpoint_root / checkpoint.checkpoint_name(step)
    run.stop_request.exit_agreed()
    cause = run.stop_request.signal_name or "a signal to another process"
    run.run_log.write("stopped", step=step, cause=cause, checkpoint=str(saved_to), exit_code=EXIT_STOPPED)
    run.progress.close()
    _wait_for_uploads(run)
    run.accelerator.print(f"Stopped at step {step} of {run.total_steps} on {cause}; checkpoint written to "
                          f"{saved_to}. Run the same command again to resume from it (resume=auto). "
                          f"Exit code {EXIT_STOPPED}.")
    raise TrainingStopped(f"stopped at step {step}")  # train() closes the trackers' run


# ----------------------------------------------------------------------------- finish

def _finish(run: Run) -> dict:
    """Pick the weights (``model_selection``), evaluate validation (if any) and test once, write the outputs."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    selected_step = _select_weights(run)
    results = {"validation": None}  # stays None without a validation split
    for name, loader in run.eval_loaders.items():
        results[name] = evaluate_split(run.model, loader, expected_count=len(run.tokenized[name]),
                                       label_names=LABEL_NAMES, gather=accelerator.gather_for_metrics)
        run.run_log.write("eval", split=name, step=selected_step, final=True,
                          accuracy=results[name]["accuracy"], macro_f1=results[name]["macro_f1"])
    accelerator.log(tracking.eval_scalars("test", results["test"]), step=run.state.global_step)
    metrics = {**results, "model_selection": run.config.model_selection, "selected_step": selected_step,
               "global_step": run.state.global_step,
               "train": _describe_training(accelerator, run.config, run.state, len(run.tokenized["train"]))}
    with _written_on_every_rank(run, f"the final model and metrics in {run.output_dir}"):
        if accelerator.is_main_process:
            _write_outputs(run, metrics)
    _end_distributed_run(run)
    _wait_for_uploads(run)  # after the last collective, like the push: the other ranks are done
    if run.config.push_to_hub and accelerator.is_main_process:
        # After the last collective: the other ranks are done, so a slow or failed upload cannot keep them
        # waiting in a barrier until the NCCL timeout.
        metrics["hub"] = push_run_to_hub(run.output_dir, run.config.hub_model_id, private=run.config.hub_private,
                                         revision=run.config.hub_revision or None, log=accelerator.print)
    return metrics


def _end_distributed_run(run: Run) -> None:
    """The last barrier, then the end of the process group, in an order that cannot hang.

    gloo frees a finished collective's tensors on its worker thread, which needs the GIL, and the process group's
    destructor joins that thread while holding the GIL. When the destructor ran (as the DDP model was freed)
    before the worker had freed the barrier and the collectives it waited on, the finished run never exited
    (with the write vote right before the barrier, 3 of 5 test runs hung so). Holding the barrier's handle
    until the group is gone leaves the last reference, and the freeing, to this thread; dropping the model
    here makes the group go now.
    """
    if not torch.distributed.is_initialized():
        return  # one process: no group
    last_barrier = torch.distributed.barrier(async_op=True)
    last_barrier.wait()
    run.accelerator.state.destroy_process_group()  # unregisters the group; the DDP model still holds it
    run.model = run.forward_model = None
    run.accelerator.free_memory()  # accelerate's references to the DDP model: the model, its reducer and the group go
    del last_barrier


def _select_weights(run: Run) -> int:
    """Load the best validation weights into the model if asked for; returns the step the weights are from."""
    best = run.output_dir / BEST_WEIGHTS
    if run.config.model_selection == "best_validation" and best.is_file():
        load_model(run.accelerator.unwrap_model(run.model), str(best))  # copied onto each parameter's device
        return run.state.best_step
    return run.state.global_step


def _write_outputs(run: Run, metrics: dict) -> None:
    model_dir = run.output_dir / "model"
    model_dir.mkdir(exist_ok=True)  # save_pretrained only logs an error and returns when the path is a file
    run.accelerator.unwrap_model(run.model).save_pretrained(model_dir)
    run.tokenizer.save_pretrained(model_dir)
    write_json(run.output_dir / "metrics.json", metrics)
    plots = run.output_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_loss(run.run_log.records(), plots / "loss.png")
    test = metrics["test"]
    plot_confusion_matrix(test["confusion_matrix"], LABEL_NAMES, plots / "confusion_matrix.png")
    write_model_card(run.output_dir, repo_id=run.config.hub_model_id or None)
    run.accelerator.print(f"test accuracy {test['accuracy']:.4f} (macro-F1 {test['macro_f1']:.4f}) "
                          f"on {test['num_examples']} examples; outputs in {run.output_dir}")


def _describe_training(accelerator, config: TrainConfig, state: TrainerState, train_examples: int) -> dict:
    if accelerator.device.type == "cuda":
        hardware = f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    else:
        hardware = f"{accelerator.num_processes} CPU process(es) on {platform.processor() or platform.machine()}"
    steps = max(state.global_step, 1)
    return {
        "train_examples": train_examples,
        "num_processes": accelerator.num_processes,
        "num_machines": max(1, accelerator.num_processes
                            // int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))),
        "mixed_precision": accelerator.mixed_precision,
        "distributed_type": str(accelerator.distributed_type.value),
        "total_train_batch_size": config.total_train_batch_size(accelerator.num_processes),
        "train_seconds": round(state.train_seconds, 2),
        "samples_per_s": round(steps * config.total_train_batch_size(accelerator.num_processes)
                               / max(state.train_seconds, 1e-9), 2),
        "hardware": hardware,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "datasets": datasets.__version__},
    }


def _should_compile(config: TrainConfig, device: torch.device) -> bool:
    # On a GPU compilation pays back in the first minute; on a few CPU cores it costs more than it saves.
    return config.torch_compile == "true" or (config.torch_compile == "auto" and device.type == "cuda")


def _build_optimizer(model: torch.nn.Module, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter, learning_rate, weight_decay in parameter_settings(model, config):
        groups.setdefault((learning_rate, weight_decay), []).append(parameter)
    # Fused AdamW: one kernel per step instead of a dozen per tensor group, and it can skip a step on the
    # device (distrinews/training/stability.py). The scheduler scales every group's own peak rate.
    return torch.optim.AdamW([{"params": params, "lr": lr, "weight_decay": decay}
                              for (lr, decay), params in groups.items()], lr=config.learning_rate,
                             fused=fused or None)


def _data_loader(dataset, collator, config: TrainConfig, device: torch.device, **batching) -> DataLoader:
    workers = config.dataloader_num_workers
    # A private generator: each new iterator draws its worker seed from it, not from torch's global RNG, which
    # then feeds dropout alone. Otherwise a resumed run (one iterator more than the run it resumes) would
    # draw different dropout masks from the checkpointed RNG state.
    return DataLoader(dataset, collate_fn=collator, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals if workers else None,
                      generator=torch.Generator().manual_seed(config.seed), **batching)


def _find_resume_checkpoint(config: TrainConfig, checkpoint_root: Path) -> Path | None:
    if config.resume == "none":
        return None
    if config.resume == "auto":
        return checkpoint.latest_checkpoint(checkpoint_root)
    path = Path(config.resume)
    if not (path / checkpoint.COMPLETE_MARKER).is_file():
        raise ConfigError(f"resume={config.resume!r} is not a complete checkpoint (no {checkpoint.COMPLETE_MARKER} "
                          "marker): pass a checkpoints/step-* folder, 'auto' or 'none'")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_train_config(argv)
        if config.push_to_hub or config.hub_strategy == "checkpoint":
            # No token or HF_HUB_OFFLINE: fail now, not after hours of training.
            check_push_ready("push_to_hub" if config.push_to_hub else "hub_strategy=checkpoint")
        train(config)
    except Exception as err:
        code = exit_code_for(err)
        if code is None:
            raise  # a bug: the traceback is the report
        if not isinstance(err, TrainingStopped):  # the main process already said where the checkpoint is
            # Input problems get one clear line, not a traceback from every rank.
            print(f"error: {err}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
