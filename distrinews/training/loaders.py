"""The training run's data loaders: a resumable, length-grouped share of the training batches per rank, and the
evaluation splits sorted by length; and how their worker processes end.

Plain arguments (the rank and the process count), no ``Accelerator``: the training loop prepares the evaluation
loaders with accelerate itself, which shards them and drops the duplicates it adds to even out the last batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .config import TrainConfig
from .data import PaddingCollator, evaluation_rows
from .data_workers import start_data_worker
from .sampling import ResumableBatchSampler

# A batch takes milliseconds to collate; one that takes this long was lost (data_workers.py says how that can
# happen), and an error says so where a wait would hang the run without a word.
BATCH_WAIT_SECONDS = 600


def training_loaders(config: TrainConfig, tokenized, pad_token_id: int, device: torch.device, *, num_replicas: int,
                     rank: int) -> tuple[ResumableBatchSampler, DataLoader, dict[str, DataLoader]]:
    """The training batch sampler and loader of rank ``rank``, and a loader per evaluation split (validation, test:
    those ``tokenized`` has), each batch of the evaluation splits sorted by length, so padding is nearly free."""
    collator = PaddingCollator(pad_token_id)
    sampler = ResumableBatchSampler(
        tokenized["train"]["length"], config.per_device_train_batch_size, num_replicas=num_replicas, rank=rank,
        seed=config.seed, group_by_length=config.group_by_length, text_index=tokenized["train"]["text_index"])
    train_loader = data_loader(tokenized["train"].select_columns(["input_ids", "attention_mask", "labels"]),
                               collator, config, device, batch_sampler=sampler)
    eval_loaders = {name: evaluation_loader(tokenized[name], pad_token_id, config, device)
                    for name in ("validation", "test") if name in tokenized}
    return sampler, train_loader, eval_loaders


def evaluation_loader(windows, pad_token_id: int, config: TrainConfig, device: torch.device) -> DataLoader:
    """The batches of an evaluation split's windows (``tokenize_windows``), sorted by length so padding is nearly
    free; the training loop's and ``distrinews evaluate``'s alike."""
    return data_loader(evaluation_rows(windows), PaddingCollator(pad_token_id), config, device,
                       batch_size=config.per_device_eval_batch_size)


def data_loader(dataset, collator, config: TrainConfig, device: torch.device, **batching) -> DataLoader:
    workers = config.dataloader_num_workers
    # A private generator: each new iterator draws its worker seed from it, not from torch's global RNG, which
    # then feeds dropout alone. Otherwise a resumed run (one iterator more than the run it resumes) would
    # draw different dropout masks from the checkpointed RNG state.
    return DataLoader(dataset, collate_fn=collator, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda", worker_init_fn=start_data_worker if workers else None,
                      timeout=BATCH_WAIT_SECONDS if workers else 0,
                      generator=torch.Generator().manual_seed(config.seed), **batching)


def release_loader_workers(loaders) -> None:
    """Stop the persistent data-loading workers now, not at interpreter exit. They ignore SIGTERM
    (preemption.ignore_stop_signals), and multiprocessing's exit handler stops leftover workers with exactly that
    signal and then waits for them: a process whose loaders were still referenced at exit hung there."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # set only for persistent workers
        if iterator is not None:
            iterator._shutdown_workers()  # torch's own shutdown: asks each worker to leave, then joins it
            loader._iterator = None
