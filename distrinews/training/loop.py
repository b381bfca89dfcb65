"""Fine-tune a text classifier on AG News or any labelled text with data-parallel training.

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m distrinews.train --output_dir runs/ag_news
    accelerate launch ... -m distrinews.train --dataset data/tags --problem_type multi_label_classification
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
errors in ``distrinews/core/errors.py``. What the labels are and what the outputs mean is the data's task
(``distrinews/core/tasks.py``): the loss, the metrics and the decision threshold all come from it. The Hub's part
(checkpoint uploads, the push) listens through ``callbacks`` (distrinews/training/callbacks.py); this module
imports nothing from ``distrinews.hub``.

Read it top to bottom: ``train`` runs the phases in order: ``_set_up`` (accelerator, data, model, loaders,
optimizer), ``_start_tracking`` (report_to), ``_resume_or_start``, then ``_train_steps``, which calls
``_micro_step`` per batch and ``_after_optimizer_step`` per optimizer step (device checks, ``_log_window``,
``_evaluate_and_checkpoint``, which may stop early or on a listener's word, ``_stop``), and ``_finish`` (pick the
weights and the threshold, evaluate test, write the outputs, the listeners' end). Everything the phases share lives
in one ``Run`` (``run.py``); the data loaders, the optimizer and the run's description are built by their own
modules.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration, \
    broadcast_object_list, set_seed
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import get_scheduler

from . import checkpoint, faults, state_files, tracking
from ..core.atomic import write_json
from ..core.errors import EXIT_STOPPED, CheckpointWriteError, ConfigError, NonFiniteLossError, TrainingStopped, \
    exit_code_for
from ..core.machine import Precision, cpu_name
from ..core.modeling import load_classifier
from .callbacks import TrainerCallback
from .checkpoint import TrainerState
from .config import TrainConfig, parse_precision_flag, parse_train_config
from .cpu_dropout import use_cpu_dropout
from .data import DataOptions, checked_max_length, load_labelled_data, loss_class_weights, \
    tokenize_splits, train_window_policy
from .decisions import apply_to_model, decide_on_validation, split_report
from .evaluation import collect_outputs, scalar_metrics, score_outputs
from .extra_metrics import load_extra_metrics
from .loaders import release_loader_workers, training_loaders
from .mistakes import ERRORS_FILE, write_mistakes
from .model_card import write_model_card
from .optimization import build_optimizer, should_compile
from .precision import training_precision
from .preemption import StopRequest
from .process_group import end_process_group
from .rdrop import rdrop_loss
from .reporting import RunLog, class_weights_by_label, describe_training, metrics_line, plot_confusion, \
    plot_loss, plot_reliability, plot_risk_coverage, shortened_list
from .run import LogWindow, Run
from .selection import Selection
from .stability import NonFiniteGuard

BEST_WEIGHTS = "best_model.safetensors"


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = (), mixed_precision: str = "auto") -> dict:
    """Run training, pick the weights to keep and evaluate them on test; return metrics.json.

    ``callbacks`` listen to the run (distrinews/training/callbacks.py): the Hub's uploads and push, for example.
    ``mixed_precision`` is ``distrinews train --mixed_precision`` (training/precision.py)."""
    stop_request = StopRequest()
    try:
        run = _set_up(config, stop_request, callbacks, training_precision(mixed_precision))
        try:
            _start_tracking(run)
            _resume_or_start(run)
            _train_steps(run)
            return _finish(run)
        except (NonFiniteLossError, CheckpointWriteError):
            # Every rank raises these at the same step (the gradients and the write vote are all-reduced), so the
            # group can end before the process does: a rank that exits with it alive can abort in gloo's teardown
            # (SIGABRT instead of the documented exit code), as a stopped rank could (_stop).
            _end_distributed_run(run)
            raise
        finally:
            # However the run ends, the trackers' run is closed with what it logged. Not end_training(): after a
            # stop or a failure it would destroy the process group while another rank may still be in a
            # collective, which then fails with "Connection closed by peer" (_finish ends the group itself).
            for tracker in run.accelerator.trackers:
                tracker.finish()
            release_loader_workers([run.train_loader, *run.eval_loaders.values()])
    finally:
        stop_request.uninstall()  # no-op unless the loop was interrupted by an exception


# ----------------------------------------------------------------------------- setup

def _set_up(config: TrainConfig, stop_request: StopRequest, callbacks: Sequence[TrainerCallback],
            precision: Precision) -> Run:
    accelerator = _make_accelerator(config, precision)
    accelerator.print(f"precision: {precision.words} ({precision.why})")
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on TF32 tensor cores
    set_seed(config.seed)  # before the model: the new classification head must match on every rank
    data, model, tokenizer, tokenized, extra_metrics = _load_model_and_data(config, accelerator)
    class_weights = loss_class_weights(config, data.task, tokenized["train"]["labels"], accelerator.device)
    # On every rank, so all fail together before training (each rank writes into checkpoints).
    checkpoint.check_output_dir(Path(config.output_dir), accelerator.process_index, keep_last=config.keep_last,
                                weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    if accelerator.is_main_process:
        checkpoint.remove_stale_staging(Path(config.output_dir) / "checkpoints")
        config.save(Path(config.output_dir) / "train_config.json")
    accelerator.wait_for_everyone()

    total_steps = config.total_steps(len(tokenized["train"]), accelerator.num_processes)
    sampler, train_loader, eval_loaders = training_loaders(
        config, tokenized, tokenizer.pad_token_id, accelerator.device, num_replicas=accelerator.num_processes,
        rank=accelerator.process_index)
    # accelerate shards the evaluation batches, and gather_for_metrics drops the duplicates it adds to even them out.
    eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}
    steps_per_epoch = len(sampler) // config.gradient_accumulation_steps
    optimizer = build_optimizer(model, config, fused=accelerator.device.type in ("cuda", "cpu"))
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer,
                              num_warmup_steps=round(config.warmup_ratio * total_steps), num_training_steps=total_steps)
    # The scheduler is stepped by hand, once per optimizer step, and checkpointed as JSON (state_files.py), not
    # registered with accelerate, which loads custom objects with a full unpickle.
    model, optimizer = accelerator.prepare(model, optimizer)
    # Compile the DDP-wrapped model (as accelerate does), but keep `model` itself for no_sync, unwrap and saving.
    forward_model = torch.compile(model, dynamic=True) if should_compile(config, accelerator.device) else model

    train_data = checkpoint.data_fingerprint(tokenized["train"]["length"], tokenized["train"]["labels"])
    state = TrainerState(run_signature=checkpoint.run_signature(config, accelerator.num_processes, train_data,
                                                                total_steps, data.task.labels))
    return Run(config=config, accelerator=accelerator, model=model, forward_model=forward_model, tokenizer=tokenizer,
               data=data, tokenized=tokenized, class_weights=class_weights, selection=Selection.from_config(config),
               callbacks=callbacks, extra_metrics=extra_metrics, sampler=sampler, train_loader=train_loader,
               eval_loaders=eval_loaders, optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
               micro_batches_per_epoch=steps_per_epoch * config.gradient_accumulation_steps, state=state,
               run_log=RunLog(Path(config.output_dir) / "log.jsonl", enabled=accelerator.is_main_process),
               stop_request=stop_request)


def _make_accelerator(config: TrainConfig, precision: Precision) -> Accelerator:
    output_dir = Path(config.output_dir)
    return Accelerator(
        mixed_precision=precision.mixed_precision,
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
    data = load_labelled_data(DataOptions.from_config(config))
    needing_validation = {"model_selection=best_validation": config.model_selection == "best_validation",
                          f"early_stopping_patience={config.early_stopping_patience}": config.early_stopping_patience}
    for setting, asks in needing_validation.items():
        if asks and "validation" not in data.splits:
            raise ConfigError(f"{setting} needs a validation split: set validation_fraction > 0 or give the data "
                              "a validation split")
    data.task = data.task.with_threshold(config.decision_threshold or None)  # 0: chosen on validation at the end
    extra_metrics = load_extra_metrics(config.extra_metric_names(), data.task)  # a misfit stops every rank here
    with accelerator.main_process_first():  # download once, then read from the cache
        model, tokenizer = load_classifier(config.model_name_or_path, for_training=True, task=data.task)
    config.max_length = checked_max_length(config.max_length, model, tokenizer, config.model_name_or_path,
                                           warn=accelerator.print)
    with accelerator.local_main_process_first():  # tokenize once per machine; the others hit the cache
        tokenized = tokenize_splits(data.splits, tokenizer, config.max_length, train_window_policy(config))
    if accelerator.device.type == "cpu" and config.cpu_dropout_masks:
        accelerator.print(f"CPU dropout masks from 16-bit random numbers: {use_cpu_dropout(model)}")
    return data, model, tokenizer, tokenized, extra_metrics


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
    for callback in run.callbacks:  # a Hub checkpoint may be fetched here (main process)
        callback.on_train_begin(run)
    accelerator.wait_for_everyone()
    resume_from = checkpoint.resume_checkpoint(config.resume, run.checkpoint_root)
    if resume_from is not None:
        saved = run.state = _load_checkpoint(run, resume_from)
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
    splits, task = run.data.splits, run.task
    accelerator.print(
        f"Training {config.model_name_or_path} ({task.problem_type}, {len(task.labels)} labels: "
        f"{shortened_list(task.labels)}) on {len(run.tokenized['train'])} windows of {len(splits['train'])} texts "
        f"({len(splits['validation']) if 'validation' in splits else 'no'} validation, "
        f"{len(splits['test'])} test texts): {run.total_steps} steps of {run.examples_per_step} windows on "
        f"{accelerator.num_processes} process(es), {accelerator.device.type}, "
        f"mixed precision {accelerator.mixed_precision}")


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
    while not finished and state.global_step < run.total_steps and not state.stop_reason:
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
    inputs = {key: value.to(run.device, non_blocking=True) for key, value in batch.items() if key != "labels"}
    labels = batch["labels"].to(run.device, non_blocking=True)
    with accelerator.accumulate(model):
        if run.config.rdrop_weight:
            loss = rdrop_loss(run.forward_model, inputs, labels, run.config.rdrop_weight, run.task, run.class_weights)
        else:  # the task's loss, not the model's: class weights and multi-label go through one path
            loss = run.task.loss(run.forward_model(**inputs).logits, labels, run.class_weights)
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
    checkpointed, finished = _evaluate_and_checkpoint(run, finished, epoch_finished)
    if stop_agreed and not finished:
        _stop(run, checkpointed)
    for callback in run.callbacks:
        callback.on_step_end(run)
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


def _evaluate_and_checkpoint(run: Run, finished: bool, epoch_finished: bool) -> tuple[bool, bool]:
    """Validate and checkpoint when due; returns whether a checkpoint was written, and whether training is
    finished (early stopping may end it here)."""
    config, step = run.config, run.state.global_step
    evaluated = checkpointed = False
    if "validation" in run.eval_loaders and (finished or epoch_finished
                                              or (config.eval_every and step % config.eval_every == 0)):
        evaluating = time.perf_counter()
        _validate_and_select(run)
        evaluated = True
        if run.state.stop_reason and not finished:  # early stopping or a listener (pruning): it ends here
            finished = True
            if run.window.steps:  # the steps since the last log line, with the evaluation's time left out
                run.window.started += time.perf_counter() - evaluating
                _log_window(run)
    if finished or epoch_finished or (config.checkpoint_every and step % config.checkpoint_every == 0):
        _save_checkpoint(run)
        checkpointed = True
    if evaluated or checkpointed:
        run.window.started = time.perf_counter()  # keep evaluation and I/O out of the throughput figures
    return checkpointed, finished


def _validate_and_select(run: Run) -> None:
    state, accelerator = run.state, run.accelerator
    outputs = collect_outputs(run.model, run.eval_loaders["validation"], run.tokenized["validation"],
                              gather=accelerator.gather_for_metrics)
    metrics = score_outputs(run.task, outputs, run.class_weights)
    run.run_log.write("eval", split="validation", step=state.global_step, epoch=state.epoch, **scalar_metrics(metrics))
    accelerator.log(tracking.eval_scalars("eval", metrics), step=state.global_step)
    accelerator.print(f"step {state.global_step}: validation {metrics_line(metrics)}")
    # Every rank sees the same gathered metrics, so they agree on "best" and on stopping without another collective.
    improved = run.selection.record(state, metrics, state.global_step)
    state.stop_reason = state.stop_reason or _listeners_verdict(run, metrics)
    if state.stop_reason:
        run.run_log.write("early_stop", step=state.global_step, reason=state.stop_reason)
        accelerator.print(f"step {state.global_step}: {state.stop_reason}")
    if run.config.model_selection == "best_validation" and improved:
        with _written_on_every_rank(run, f"the best weights {run.output_dir / BEST_WEIGHTS}"):
            if accelerator.is_main_process:
                staging = run.output_dir / f".{BEST_WEIGHTS}.tmp"
                save_model(accelerator.unwrap_model(run.model), str(staging))
                staging.replace(run.output_dir / BEST_WEIGHTS)


def _listeners_verdict(run: Run, metrics: dict) -> str:
    """The evaluation to the listeners; a reason to stop that one gives on the main process (a sweep's pruner asks
    its study once) goes to every rank, which all stop at this step as early stopping stops them."""
    reasons = [callback.on_evaluate(run, metrics) for callback in run.callbacks]
    if not run.callbacks:  # every rank has the same listeners, so all skip the broadcast together
        return ""
    return broadcast_object_list([next(filter(None, reasons), "")])[0]


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
            run.config.save(staging / checkpoint.CONFIG_FILE)
            state_files.save_scheduler_state(staging, run.scheduler)
            final = checkpoint.finalize_checkpoint(staging, run.state, keep_last=run.config.keep_last,
                                                   best_weights=run.output_dir / BEST_WEIGHTS)
    if final is not None:
        for callback in run.callbacks:
            callback.on_checkpoint(run, final)


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


def _stop(run: Run, checkpointed: bool) -> None:
    """Every rank agreed to stop (SIGTERM/SIGINT): make sure a checkpoint holds this step, then leave."""
    if not checkpointed:
        _save_checkpoint(run)
    step = run.state.global_step
    saved_to = run.checkpoint_root / checkpoint.checkpoint_name(step)
    run.stop_request.exit_agreed()
    cause = run.stop_request.signal_name or "a signal to another process"
    run.run_log.write("stopped", step=step, cause=cause, checkpoint=str(saved_to), exit_code=EXIT_STOPPED)
    # Every rank is here, so the group can end before the process does: a rank that exits with it alive can abort
    # in gloo's teardown ("terminate called without an active exception", SIGABRT instead of EXIT_STOPPED).
    _end_distributed_run(run)
    run.progress.close()
    for callback in run.callbacks:
        callback.on_stop(run)
    run.accelerator.print(f"Stopped at step {step} of {run.total_steps} on {cause}; checkpoint written to "
                          f"{saved_to}. Run the same command again to resume from it (resume=auto). "
                          f"Exit code {EXIT_STOPPED}.")
    raise TrainingStopped(f"stopped at step {step}")  # train() closes the trackers' run


# ----------------------------------------------------------------------------- finish

def _finish(run: Run) -> dict:
    """Pick the weights (``model_selection``), decide on validation (decisions.py: calibration, thresholds, the
    confidence floor), evaluate validation (if any) and test once, write the outputs; then the listeners' end."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    selected_step = _select_weights(run)
    # From here the model is run as it is published and used (pipeline(), distrinews evaluate): fp32 weights in
    # fp32, not under training's autocast, so metrics.json describes the saved model to the last digit.
    accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
    decisions = decide_on_validation(run.task, _split_outputs(run, "validation"), run.config)
    apply_to_model(decisions, accelerator.unwrap_model(run.model))  # the same on every rank
    run.data.task = decisions.task
    results = {"validation": None}  # stays None without a validation split
    outputs = {name: _split_outputs(run, name) for name in run.eval_loaders}
    for name, split_outputs in outputs.items():
        results[name] = {**score_outputs(run.task, split_outputs, run.class_weights, run.extra_metrics),
                         **split_report(decisions, split_outputs)}
        run.run_log.write("eval", split=name, step=selected_step, final=True, **scalar_metrics(results[name]))
    accelerator.log(tracking.eval_scalars("test", results["test"]), step=run.state.global_step)
    ended = run.state.stop_reason or f"completed: {run.state.global_step} of {run.total_steps} optimizer steps"
    run.run_log.write("end", step=run.state.global_step, reason=ended, final=True)
    metrics = {**results, "model_selection": run.config.model_selection,
               "metric_for_best_model": run.selection.metric, "selected_step": selected_step,
               "global_step": run.state.global_step, "training_ended": ended, "data": run.data.summary(),
               "class_weights": class_weights_by_label(run.task.labels, run.class_weights),
               "decision_threshold": None, **decisions.report, "train": _describe_training(run)}
    with _written_on_every_rank(run, f"the final model and metrics in {run.output_dir}"):
        if accelerator.is_main_process:
            _write_outputs(run, metrics, outputs["test"])
    _end_distributed_run(run)
    for callback in run.callbacks:  # after the last collective: a slow push keeps no other rank waiting
        callback.on_train_end(run, metrics)
    return metrics


def _split_outputs(run: Run, name: str):
    """Every example's outputs on split ``name`` (gathered from every rank), or None without that split."""
    if name not in run.eval_loaders:
        return None
    return collect_outputs(run.model, run.eval_loaders[name], run.tokenized[name],
                           gather=run.accelerator.gather_for_metrics)


def _end_distributed_run(run: Run) -> None:
    """The last barrier, then the end of the process group (process_group.py), dropping the DDP model, which holds
    the group, and accelerate's references to it in between."""
    def release() -> None:
        run.model = run.forward_model = None
        run.accelerator.free_memory()  # accelerate's references to the DDP model: the model, its reducer, the group

    end_process_group(run.accelerator.state, release)


def _select_weights(run: Run) -> int:
    """Load the best validation weights into the model if asked for; returns the step the weights are from."""
    best = run.output_dir / BEST_WEIGHTS
    if run.config.model_selection == "best_validation" and best.is_file():
        load_model(run.accelerator.unwrap_model(run.model), str(best))  # copied onto each parameter's device
        return run.state.best_step
    return run.state.global_step


def _write_outputs(run: Run, metrics: dict, test_outputs) -> None:
    model_dir = run.output_dir / "model"
    model_dir.mkdir(exist_ok=True)  # save_pretrained only logs an error and returns when the path is a file
    run.accelerator.unwrap_model(run.model).save_pretrained(model_dir)
    run.tokenizer.save_pretrained(model_dir)
    write_json(run.output_dir / "metrics.json", metrics)
    write_mistakes(run.output_dir / ERRORS_FILE, run.task, test_outputs.text_probabilities(run.task),
                   test_outputs.references, run.data.splits["test"], range(len(test_outputs.references)))
    plots = run.output_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_loss(run.run_log.records(), plots / "loss.png", metric=run.selection.metric)
    test = metrics["test"]
    plot_confusion(run.task, test, plots / "confusion_matrix.png")
    plot_reliability(test, plots / "reliability.png")
    plot_risk_coverage(test, plots / "risk_coverage.png")
    write_model_card(run.output_dir, repo_id=run.config.hub_model_id or None)
    run.accelerator.print(f"test {metrics_line(test)} on {test['num_examples']} examples; outputs in "
                          f"{run.output_dir}")


def _describe_training(run: Run) -> dict:
    accelerator = run.accelerator
    if accelerator.device.type == "cuda":
        hardware = f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    else:
        hardware = f"{accelerator.num_processes} CPU process(es) on {cpu_name()}"
    return describe_training(hardware=hardware, num_processes=accelerator.num_processes,
                             mixed_precision=accelerator.mixed_precision,
                             distributed_type=str(accelerator.distributed_type.value),
                             total_train_batch_size=run.examples_per_step, optimizer_steps=run.state.global_step,
                             train_seconds=run.state.train_seconds, train_examples=len(run.tokenized["train"]))


def _load_checkpoint(run: Run, folder: Path) -> TrainerState:
    """Check checkpoint ``folder`` on every rank (state_files.py: nothing in it may run code), then load it into the
    run; returns its trainer state."""
    accelerator = run.accelerator
    scheduler_state = state_files.checked_scheduler_state(folder)
    saved = TrainerState.load(folder / checkpoint.STATE_FILE)
    checkpoint.check_resumable(folder, saved.run_signature, run.state.run_signature)
    accelerator.wait_for_everyone()  # every rank has read the folder before the main process may convert it
    if accelerator.is_main_process:
        state_files.convert_legacy_scheduler_state(folder, scheduler_state)
    accelerator.wait_for_everyone()
    accelerator.load_state(str(folder))
    state_files.load_scheduler_state(run.scheduler, scheduler_state)
    return saved


def main(argv: Sequence[str] | None = None,
         callbacks_for: Callable[[TrainConfig], Sequence[TrainerCallback]] | None = None) -> int:
    """Train with the config ``argv`` gives; ``callbacks_for`` builds the listeners the config asks for (the entry
    points, distrinews/train.py and ``distrinews train``, hand in the Hub's). Returns the exit code."""
    try:
        config, precision_flag = parse_train_config(argv), parse_precision_flag(argv)
        if callbacks_for is None and (config.push_to_hub or config.hub_strategy == "checkpoint"):
            raise ConfigError("push_to_hub and hub_strategy=checkpoint need the Hub's listeners: train with "
                              "`python -m distrinews.train` or `distrinews train`")
        train(config, callbacks_for(config) if callbacks_for else (), precision_flag)
    except Exception as err:
        code = exit_code_for(err)
        if code is None:
            raise  # a bug: the traceback is the report
        if not isinstance(err, TrainingStopped):  # the main process already said where the checkpoint is
            # Input problems get one clear line, not a traceback from every rank.
            print(f"error: {err}", file=sys.stderr)
        return code
    return 0
