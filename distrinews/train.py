"""Fine-tune a text classifier on AG News with data-parallel training.

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m distrinews.train --output_dir runs/ag_news
    accelerate launch --config_file accelerate_configs/cpu.yaml -m distrinews.train --config my_run.yaml
    distrinews train --max_train_samples 2000 --num_train_epochs 1      # one process
    accelerate launch --config_file accelerate_configs/cpu.yaml -m distrinews.train --push_to_hub --hub_model_id USER/NAME

The same file runs on CPU (gloo), one GPU, N GPUs and several machines: the accelerate YAML decides the
processes and the precision; the training config (distrinews/config.py) decides everything else. This is
the only module that touches the ``Accelerator``.

Run the same command again after any interruption: ``resume=auto`` continues from the newest complete
checkpoint, batch for batch. Exit codes of the training processes (docs/README-reliability.md):
0 done, 1 the Hub push failed (the run is complete: `distrinews push` retries it), 2 bad input (config, data, model, output_dir, a checkpoint of another run), 3 non-finite loss
for max_nonfinite_steps steps, 4 a checkpoint could not be written, 75 stopped by SIGTERM/SIGINT after
writing a checkpoint (resume), 128+N killed by signal N.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import accelerate
import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed
from safetensors.torch import load_model, save_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from . import checkpoint, faults
from .checkpoint import CheckpointMismatchError, CheckpointWriteError, OutputDirError, TrainerState
from .config import ConfigError, TrainConfig, parse_train_config
from .cpu_dropout import use_cpu_dropout
from .data import LABEL_NAMES, DataError, PaddingCollator, load_ag_news, sorted_by_length, tokenize_splits
from .evaluation import evaluate_split
from .hub import HubPushError, check_push_ready, push_run_to_hub
from .model_card import write_model_card
from .modeling import ModelLoadError, load_classifier
from .optimization import parameter_settings
from .preemption import EXIT_STOPPED, StopRequest, TrainingStopped, ignore_stop_signals
from .rdrop import rdrop_loss
from .reporting import RunLog, plot_confusion_matrix, plot_loss, write_json
from .sampling import ResumableBatchSampler
from .stability import NonFiniteGuard, NonFiniteLossError

BEST_WEIGHTS = "best_model.safetensors"
EXIT_PUSH_FAILED, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_CHECKPOINT_WRITE_FAILED = 1, 2, 3, 4


def train(config: TrainConfig) -> dict:
    """Run training, pick the weights to keep and evaluate them on test; return metrics.json."""
    stop_request = StopRequest()
    try:
        return _train(config, stop_request)
    finally:
        stop_request.uninstall()  # no-op unless the loop was interrupted by an exception


def _train(config: TrainConfig, stop_request: StopRequest) -> dict:
    accelerator = Accelerator(
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
    device = accelerator.device
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on TF32 tensor cores
    output_dir = Path(config.output_dir)
    set_seed(config.seed)  # before the model: the new classification head must match on every rank

    # Every rank validates the data itself, so a bad file fails them all at once instead of leaving
    # some waiting in a collective; nothing has been written to output_dir yet.
    splits = load_ag_news(config.dataset, validation_fraction=config.validation_fraction, seed=config.seed,
                          max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
                          headline_views=config.headline_views)
    has_validation = "validation" in splits
    if config.model_selection == "best_validation" and not has_validation:
        raise ConfigError("model_selection=best_validation needs a validation split: set validation_fraction > 0 "
                          "or give the data a validation file")
    with accelerator.main_process_first():  # download once, then read from the cache
        model, tokenizer = load_classifier(config.model_name_or_path, for_training=True)
    with accelerator.local_main_process_first():  # tokenize once per machine; the others hit the cache
        tokenized = tokenize_splits(splits, tokenizer, config.max_length)

    if device.type == "cpu" and config.cpu_dropout_masks:
        accelerator.print(f"CPU dropout masks from 16-bit random numbers: {use_cpu_dropout(model)}")

    checkpoint_root = output_dir / "checkpoints"
    # On every rank, so all fail together before training (each rank writes into checkpoints).
    checkpoint.check_output_dir(output_dir, accelerator.process_index, keep_last=config.keep_last,
                                weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    if accelerator.is_main_process:
        checkpoint.remove_stale_staging(checkpoint_root)
        config.save(output_dir / "train_config.json")
    accelerator.wait_for_everyone()

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

    steps_per_epoch = len(sampler) // config.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(tokenized['train'])} training examples give no full optimizer step of "
                         f"{config.total_train_batch_size(accelerator.num_processes)} examples")
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)
    micro_batches_per_epoch = steps_per_epoch * config.gradient_accumulation_steps

    optimizer = _build_optimizer(model, config, fused=device.type in ("cuda", "cpu"))
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer,
                              num_warmup_steps=round(config.warmup_ratio * total_steps), num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by hand, once per optimizer step
    # Compile the DDP-wrapped model (as accelerate does), but keep `model` itself for no_sync, unwrap and saving.
    forward_model = torch.compile(model, dynamic=True) if _should_compile(config, device) else model

    train_data = checkpoint.data_fingerprint(tokenized["train"]["length"], tokenized["train"]["labels"])
    state = TrainerState(run_signature=checkpoint.run_signature(config, accelerator.num_processes, train_data,
                                                                total_steps))
    run_log = RunLog(output_dir / "log.jsonl", enabled=accelerator.is_main_process)
    resume_from = _find_resume_checkpoint(config, checkpoint_root)
    if resume_from is not None:
        saved = TrainerState.load(resume_from / checkpoint.STATE_FILE)
        checkpoint.check_resumable(resume_from, saved.run_signature, state.run_signature)
        accelerator.load_state(str(resume_from))
        state = saved
        if accelerator.is_main_process:
            checkpoint.restore_best_weights(resume_from, output_dir / BEST_WEIGHTS)
        run_log.rewind(state.global_step, checkpoint=str(resume_from))
        accelerator.print(f"Resuming from {resume_from} (step {state.global_step}, epoch {state.epoch}, "
                          f"batch {state.batches_done_in_epoch} of the epoch)")
    elif accelerator.is_main_process:
        (output_dir / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
        (output_dir / BEST_WEIGHTS).unlink(missing_ok=True)
        for old in checkpoint.remove_checkpoints(checkpoint_root):  # only with resume=none: they would be resumed
            accelerator.print(f"resume=none: deleted {old}")
    faults.install_nan_loss(accelerator.unwrap_model(model), current_step=lambda: state.global_step + 1)
    examples_per_step = config.total_train_batch_size(accelerator.num_processes)
    accelerator.print(
        f"Training {config.model_name_or_path} on {len(tokenized['train'])} examples "
        f"({len(tokenized['validation']) if has_validation else 'no'} validation, {len(tokenized['test'])} test): "
        f"{total_steps} steps of "
        f"{examples_per_step} examples on {accelerator.num_processes} process(es), "
        f"{accelerator.device.type}, mixed precision {accelerator.mixed_precision}")

    def validate_and_select() -> None:
        metrics = evaluate_split(model, eval_loaders["validation"], expected_count=len(tokenized["validation"]),
                                 label_names=LABEL_NAMES, gather=accelerator.gather_for_metrics)
        run_log.write("eval", split="validation", step=state.global_step, epoch=state.epoch,
                      accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
        accelerator.print(f"step {state.global_step}: validation accuracy {metrics['accuracy']:.4f}, "
                          f"macro-F1 {metrics['macro_f1']:.4f}")
        # Every rank sees the same gathered metrics, so they agree on "best" without another collective.
        if config.model_selection == "best_validation" and metrics["accuracy"] > state.best_validation_accuracy:
            state.best_validation_accuracy, state.best_step = metrics["accuracy"], state.global_step
            if accelerator.is_main_process:
                staging = output_dir / f".{BEST_WEIGHTS}.tmp"
                save_model(accelerator.unwrap_model(model), str(staging))
                staging.replace(output_dir / BEST_WEIGHTS)

    def save_checkpoint() -> None:
        staging = checkpoint.staging_dir(checkpoint_root, state.global_step)
        with checkpoint.write_errors_reported(staging):
            accelerator.save_state(str(staging))  # every rank writes its own RNG state into the folder
        faults.crash_point("crash_during_checkpoint", state.global_step)
        accelerator.wait_for_everyone()  # every rank's files are on disk before the marker is written
        if accelerator.is_main_process:
            with checkpoint.write_errors_reported(staging):
                config.save(staging / "train_config.json")
                checkpoint.finalize_checkpoint(staging, state, keep_last=config.keep_last,
                                               best_weights=output_dir / BEST_WEIGHTS)
        accelerator.wait_for_everyone()

    def stop_after_checkpoint(checkpointed: bool) -> None:
        if not checkpointed:
            save_checkpoint()
        saved_to = checkpoint_root / checkpoint.checkpoint_name(state.global_step)
        stop_request.stop_is_safe()
        cause = stop_request.signal_name or "a signal to another process"
        run_log.write("stopped", step=state.global_step, cause=cause, checkpoint=str(saved_to), exit_code=EXIT_STOPPED)
        progress.close()
        accelerator.print(f"Stopped at step {state.global_step} of {total_steps} on {cause}; checkpoint written to "
                          f"{saved_to}. Run the same command again to resume from it (resume=auto). "
                          f"Exit code {EXIT_STOPPED}.")
        accelerator.end_training()
        raise TrainingStopped(f"stopped at step {state.global_step}")

    progress = tqdm(total=total_steps, initial=state.global_step, desc="training", dynamic_ncols=True,
                    disable=not accelerator.is_main_process)
    # Loss and token counts stay on the device and are read only at log steps: reading them every
    # step would make the CPU wait for the GPU each time.
    window_loss = torch.zeros((), device=device)
    window_tokens = window_micro_batches = window_steps = 0
    window_start = time.perf_counter()
    guard = NonFiniteGuard(optimizer.optimizer, limit=config.max_nonfinite_steps,
                           scaler_handles_overflow=accelerator.scaler is not None)
    # The host reads the device every step on the CPU (free there) but only every logging_steps on a GPU,
    # where a read makes the CPU wait for the GPU: the non-finite run and the stop vote are read together.
    host_check_every = 1 if device.type == "cpu" else config.logging_steps
    stop_vote = torch.zeros((), device=device)  # filled, never re-created: no host-to-device copy per step
    stop_request.install()
    model.train()
    while state.global_step < total_steps:
        sampler.set_epoch(state.epoch, start_batch=state.batches_done_in_epoch)
        for batch in itertools.islice(train_loader, micro_batches_per_epoch - state.batches_done_in_epoch):
            window_tokens += int(batch["attention_mask"].sum())  # still a CPU tensor: no device sync
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with accelerator.accumulate(model):
                loss = (rdrop_loss(forward_model, batch, config.rdrop_weight) if config.rdrop_weight
                        else forward_model(**batch).loss)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
                    guard.step(optimizer.step, grad_norm)
                    optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach()
            window_micro_batches += 1
            state.batches_done_in_epoch += 1
            if not accelerator.sync_gradients:
                continue

            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped the update
                scheduler.step()
            state.global_step += 1
            stop_agreed = False
            if state.global_step % host_check_every == 0:
                # SIGTERM/SIGINT on any rank: all ranks see the all-reduced vote at the same step and stop together.
                stop_vote.fill_(float(stop_request.requested))
                nonfinite_run, stop_votes = torch.stack([guard.consecutive.float(), accelerator.reduce(stop_vote)]).tolist()
                stop_agreed = stop_votes > 0
                if nonfinite_run:
                    run_log.write("nonfinite", step=state.global_step, consecutive=int(nonfinite_run))
                guard.raise_if_persistent(int(nonfinite_run), state.global_step,
                                          last_good=checkpoint.latest_checkpoint(checkpoint_root))
            window_steps += 1
            progress.update(1)
            epoch_finished = state.batches_done_in_epoch == micro_batches_per_epoch
            if epoch_finished:
                state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
            finished = state.global_step >= total_steps

            if state.global_step % config.logging_steps == 0 or finished:
                totals = accelerator.reduce(torch.stack([window_loss, torch.tensor(float(window_tokens), device=device)]))
                elapsed = time.perf_counter() - window_start  # reduce() synchronised, so this is honest
                state.train_seconds += elapsed
                mean_loss = totals[0].item() / (window_micro_batches * accelerator.num_processes)
                record = dict(step=state.global_step, epoch=round(state.epoch + state.batches_done_in_epoch
                                                                  / micro_batches_per_epoch, 4),
                              loss=mean_loss, lr=scheduler.get_last_lr()[0],
                              samples_per_s=window_steps * examples_per_step / elapsed,
                              examples=window_steps * examples_per_step, window_seconds=round(elapsed, 4),
                              tokens_per_s=totals[1].item() / elapsed)
                if device.type == "cuda":
                    record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                run_log.write("train", **record)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}")
                window_loss.zero_()
                window_tokens = window_micro_batches = window_steps = 0
                window_start = time.perf_counter()

            evaluated = checkpointed = False
            if has_validation and (finished or epoch_finished
                                   or (config.eval_every and state.global_step % config.eval_every == 0)):
                validate_and_select()
                evaluated = True
            if finished or epoch_finished or (config.checkpoint_every
                                              and state.global_step % config.checkpoint_every == 0):
                save_checkpoint()
                checkpointed = True
            if evaluated or checkpointed:
                window_start = time.perf_counter()  # keep evaluation and I/O out of the throughput figures
            if finished:
                break
            if stop_agreed:
                stop_after_checkpoint(checkpointed)
    stop_request.uninstall()
    progress.close()
    return _finish(accelerator, model, tokenizer, tokenized, eval_loaders, state, config, run_log)


def _finish(accelerator, model, tokenizer, tokenized, eval_loaders, state, config, run_log) -> dict:
    """Pick the weights (``model_selection``), evaluate validation (if any) and test once, write the outputs."""
    output_dir = Path(config.output_dir)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    selected_step = state.global_step
    if config.model_selection == "best_validation" and (output_dir / BEST_WEIGHTS).is_file():
        load_model(unwrapped, str(output_dir / BEST_WEIGHTS))  # copied onto each parameter's device
        selected_step = state.best_step
    results = {"validation": None}  # stays None without a validation split
    for name, loader in eval_loaders.items():
        results[name] = evaluate_split(model, loader, expected_count=len(tokenized[name]), label_names=LABEL_NAMES,
                                       gather=accelerator.gather_for_metrics)
        run_log.write("eval", split=name, step=selected_step, final=True,
                      accuracy=results[name]["accuracy"], macro_f1=results[name]["macro_f1"])
    metrics = {
        **results,
        "model_selection": config.model_selection,
        "selected_step": selected_step,
        "global_step": state.global_step,
        "train": _describe_training(accelerator, config, state, len(tokenized["train"])),
    }
    if accelerator.is_main_process:
        model_dir = output_dir / "model"
        unwrapped.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        write_json(output_dir / "metrics.json", metrics)
        plots = output_dir / "plots"
        plots.mkdir(exist_ok=True)
        plot_loss(run_log.records(), plots / "loss.png")
        plot_confusion_matrix(results["test"]["confusion_matrix"], LABEL_NAMES, plots / "confusion_matrix.png")
        write_model_card(output_dir, repo_id=config.hub_model_id or None)
        accelerator.print(f"test accuracy {results['test']['accuracy']:.4f} (macro-F1 {results['test']['macro_f1']:.4f}) "
                          f"on {results['test']['num_examples']} examples; outputs in {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if config.push_to_hub and accelerator.is_main_process:
        # After the last collective: the other ranks are done, so a slow or failed upload cannot keep them
        # waiting in a barrier until the NCCL timeout.
        metrics["hub"] = push_run_to_hub(output_dir, config.hub_model_id, private=config.hub_private,
                                         revision=config.hub_revision or None, log=accelerator.print)
    return metrics


def _describe_training(accelerator, config: TrainConfig, state: TrainerState, train_examples: int) -> dict:
    if accelerator.device.type == "cuda":
        hardware = f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    else:
        hardware = f"{accelerator.num_processes} CPU process(es) on {platform.processor() or platform.machine()}"
    steps = max(state.global_step, 1)
    return {
        "train_examples": train_examples,
        "num_processes": accelerator.num_processes,
        "num_machines": max(1, accelerator.num_processes // int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))),
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
    # device (distrinews/stability.py). The scheduler scales every group's own peak rate.
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
        if config.push_to_hub:
            check_push_ready()  # no token or HF_HUB_OFFLINE: fail now, not after hours of training
        train(config)
    except TrainingStopped:
        return EXIT_STOPPED  # the main process already said where the checkpoint is and how to resume
    except (ConfigError, DataError, ModelLoadError, OutputDirError, CheckpointMismatchError) as err:
        # Input problems get one clear line, not a traceback from every rank.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PUSH_FAILED
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except CheckpointWriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CHECKPOINT_WRITE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
