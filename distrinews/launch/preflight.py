"""What every rank would fail on, checked once in the launching process before any rank starts.

``distrinews launch`` calls ``preflight(config)``: a bad setting, an unwritable output_dir, a missing token, a model
or dataset that does not resolve, a bad row or an extra metric that cannot load or does not fit then ends the
command in seconds with one line and exit code 2, instead of a failure on every rank after their start-up and the
launcher's traceback on top. The checks are the ranks' own code (``load_labelled_data``, ``load_extra_metrics``,
``load_classifier``, ``checked_max_length``), run once here.

A Hub that cannot be reached (no network, a firewall, a wrong HF_ENDPOINT) is found with one request; the run then
goes on offline from the local cache if the model and dataset are there (and the ranks are told to stay offline,
which spares each of them the Hub client's retries), or stops at once, saying so.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import InputError, OutputDirError
from ..core.windows import WindowPolicy
from ..training.config import TrainConfig

# Hub ids are looked up with one request of at most this long: a Hub that does not answer is reported, not retried.
HUB_PROBE_TIMEOUT_S = 10
TOKENS_SAMPLE = 2000  # texts of each split cut into windows to measure the data's windows and tokens for the estimate


@dataclass
class PreflightReport:
    model: object  # the loaded classifier (for the CPU estimate's FLOP count)
    tokenizer: object
    train_examples: int  # windows trained on per epoch (train_windows=all: a long text gives several)
    eval_sizes: dict  # windows per evaluation split ({"validation": N, "test": M}), as every evaluation reads them
    tokens_per_example: float  # per training window
    offline: bool  # the Hub is unreachable and the run uses the local cache (HF_HUB_OFFLINE=1 for the ranks)


def preflight(config: TrainConfig, say: Callable[[str], None] = print) -> PreflightReport:
    """Raise the ``InputError`` (exit code 2) a rank would raise, naming what and where; return what was found."""
    if config.push_to_hub or config.hub_strategy == "checkpoint":
        from ..hub.push import check_push_ready

        check_push_ready("push_to_hub" if config.push_to_hub else "hub_strategy=checkpoint")
    check_output_dir_creatable(Path(config.output_dir))
    unreachable = _go_offline_if_hub_unreachable(config)
    # Imported after the Hub check: the datasets library reads HF_HUB_OFFLINE once, at import.
    from ..training.data import DataOptions, checked_max_length, load_labelled_data, train_window_policy
    from ..core.modeling import load_classifier

    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()  # the ranks show theirs; these loads are checks
    transformers_logging.disable_progress_bar()
    data = _from_cache_if_offline(unreachable, "dataset", config.dataset,
                                  lambda: load_labelled_data(DataOptions.from_config(config)))
    if config.extra_metrics:  # evaluate takes seconds to import: only when metrics are asked for
        from ..training.extra_metrics import load_extra_metrics

        load_extra_metrics(config.extra_metric_names(), data.task)
    model, tokenizer = _from_cache_if_offline(  # with the head the data's labels need, as the ranks load it
        unreachable, "model", config.model_name_or_path,
        lambda: load_classifier(config.model_name_or_path, for_training=True, task=data.task))
    if unreachable:
        say(f"warning: {unreachable}: training offline from the local cache (HF_HUB_OFFLINE=1)")
    max_length = checked_max_length(config.max_length, model, tokenizer, config.model_name_or_path, warn=say)
    splits = data.splits
    # Windows multiply a run's cost: counted as the ranks cut them (training/data.py: tokenize_splits), on a sample.
    train_policy = train_window_policy(dataclasses.replace(config, max_length=max_length))
    train_windows, tokens_per_window = sample_windows(splits["train"]["text"], tokenizer, train_policy)
    eval_sizes = {name: round(len(splits[name]) * sample_windows(splits[name]["text"], tokenizer,
                                                                 WindowPolicy(max_length))[0])
                  for name in ("validation", "test") if name in splits}
    return PreflightReport(model=model, tokenizer=tokenizer, train_examples=round(len(splits["train"]) * train_windows),
                           eval_sizes=eval_sizes, tokens_per_example=tokens_per_window, offline=bool(unreachable))


def sample_windows(texts, tokenizer, policy) -> tuple[float, float]:
    """Windows per text and tokens per window of the first TOKENS_SAMPLE ``texts``, cut by ``policy``."""
    from ..core.predict import cleaned_texts, encode_windows

    windows = [ids for text in encode_windows(tokenizer, cleaned_texts(texts[:TOKENS_SAMPLE]), policy)
               for ids in text.windows]
    return len(windows) / min(len(texts), TOKENS_SAMPLE), sum(map(len, windows)) / len(windows)


def _from_cache_if_offline(unreachable: str, what: str, name: str, load: Callable):
    try:
        return load()
    except InputError as err:
        if not unreachable or Path(name).is_dir():
            raise
        # One line that says both what failed and why the cache had to do: the loader only knows the second.
        raise type(err)(f"{unreachable}, and {what} {name!r} is not in the local cache: check the network (or "
                        f"HF_ENDPOINT), or pass a local folder") from None


def check_output_dir_creatable(output_dir: Path) -> None:
    """output_dir exists as a writable folder, or can be made in its nearest existing parent; nothing is left."""
    existing = next(path for path in (output_dir.absolute(), *output_dir.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise OutputDirError(f"output_dir {output_dir} cannot be created: {existing} is a file")
    probe = existing / f".distrinews-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"output_dir {output_dir} is not writable: {existing}: {err.strerror or err}") from None


def _go_offline_if_hub_unreachable(config: TrainConfig) -> str:
    """When the run names a Hub model or dataset and the Hub does not answer, switch this process and the ranks to
    the local cache; return why (empty when the Hub answered or is not needed)."""
    hub_ids = [(kind, name) for kind, name in (("model", config.model_name_or_path), ("dataset", config.dataset))
               if not Path(name).is_dir()]
    if not hub_ids or _offline_already():
        return ""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    kind, name = hub_ids[0]
    try:  # one plain request, no retries: any answer at all means the Hub is there
        getattr(HfApi(), f"{kind}_info")(name, timeout=HUB_PROBE_TIMEOUT_S)
        return ""
    except HfHubHTTPError:
        return ""  # the Hub answered (not found, gated, ...): the loaders say what it said
    except Exception as err:  # a connection that failed: DNS, refused, timed out, TLS
        reason = f"the Hub at {constants.ENDPOINT} cannot be reached ({type(err).__name__}: {err})"
    os.environ["HF_HUB_OFFLINE"] = "1"  # for the ranks, and for the datasets library imported after this
    constants.HF_HUB_OFFLINE = True  # huggingface_hub read the variable when it was imported, above
    return reason


def _offline_already() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
