"""The ``distrinews`` command: a small table of sub-commands, each a thin call into the package.

    distrinews train --output_dir runs/ag_news --num_train_epochs 3       # one process; use accelerate launch for more
    distrinews evaluate --model runs/ag_news/model --dataset DATA_DIR --split test
    distrinews predict --model USER/NAME [--revision SHA] "Stocks rally as oil slides" [--json]
    distrinews predict --model USER/NAME --input FILE_DIR_OR_HUB_DATASET --output labels.parquet   # a corpus
    distrinews push runs/ag_news --repo_id USER/NAME [--private] [--revision BRANCH]
    distrinews export-onnx runs/ag_news/model                                # the int8 graph the Space serves
    distrinews launch --output_dir runs/ag_news [TRAIN OPTIONS]          # accelerate launch on every GPU found
    distrinews launch-config multi_gpu                                       # path of a shipped accelerate YAML
    distrinews sweep --search_space space.yaml --n_trials 20 --output_dir sweeps/lr [TRAIN OPTIONS] [--launch]
    distrinews sweep --best --output_dir sweeps/lr                           # the best trial's command line
    distrinews deploy-space USER/SPACE --model_id USER/NAME [--revision SHA] [--private] [--stage_only FOLDER]
    distrinews kaggle --output DIR --dataset USER/SLUG [--kernel USER/SLUG] [--wheel PATH]
    distrinews compare RUN_DIR_OR_SWEEP_DIR... [--output FILE.md|.csv] [--plot FILE.png] [--metric NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from . import __version__
from .core.errors import exit_code_for
from .core.machine import PRECISION_CHOICES
from .core.windows import DEFAULT_MAX_WINDOWS


def _train(argv: Sequence[str]) -> int:
    from .train import main as train_main

    return train_main(argv)


# The training config's fields that say which data a model is evaluated on and how it is read: `distrinews evaluate`
# takes them as `distrinews train` does (names, defaults, help, bounds), so the same flags give the same splits.
EVALUATE_FIELDS = ("dataset", "dataset_config_name", "dataset_revision", "text_column_names", "text_column_delimiter",
                   "label_column_name", "label_separator", "validation_fraction", "test_fraction", "seed",
                   "max_eval_samples", "max_length", "per_device_eval_batch_size", "dataloader_num_workers",
                   "extra_metrics")


def _evaluate(argv: Sequence[str]) -> int:
    from .corpus.command import DEFAULT_SHARD_ROWS
    from .corpus.engine import BACKENDS
    from .training.config import add_field_flags

    parser = argparse.ArgumentParser(
        prog="distrinews evaluate", allow_abbrev=False,
        description="Evaluate a saved model on a split, with the model's own labels, problem type and decision "
        "threshold, by the training run's own evaluation: each text read in windows and scored as the Space scores "
        "it. The data options are `distrinews train`'s; give the ones the model was trained with to score the "
        "same carved splits (metrics.json then agrees to the digit).")
    parser.add_argument("--model", required=True, help="Local folder or Hub repo id.")
    parser.add_argument("--revision", default=None, help="Branch, tag or commit sha of a Hub model.")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"),
                        help="The split to score. (default: 'test')")
    parser.add_argument("--max_windows", type=int, default=DEFAULT_MAX_WINDOWS,
                        help=f"Windows of max_length tokens read per text (1 = its start only). (default: "
                             f"{DEFAULT_MAX_WINDOWS}, as the Space reads)")
    parser.add_argument("--output", help="Also write the metrics as JSON to this file.")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="Classify the split on `distrinews predict --input`'s path instead: the Space's int8 "
                        "lanes on a CPU (auto; or int8, or fp32 torch), torch in bf16/fp16 on a GPU, shared between "
                        "the processes of `accelerate launch ... -m distrinews evaluate`. Default: the training run's "
                        "own evaluation (fp32 torch, one process), which metrics.json's numbers agree with.")
    parser.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_ROWS,
                        help=f"With --backend: texts per shard, the unit the processes share out. (default: "
                             f"{DEFAULT_SHARD_ROWS})")
    _add_min_confidence(parser)
    add_field_flags(parser, EVALUATE_FIELDS)
    args = vars(parser.parse_args(argv))
    model_id, revision, split, max_windows, output, min_confidence, backend, shard_size = (
        args.pop(name) for name in ("model", "revision", "split", "max_windows", "output", "min_confidence",
                                    "backend", "shard_size"))
    if max_windows < 1 or shard_size < 1:
        parser.error(f"--max_windows {max_windows}, --shard_size {shard_size}: each must be >= 1")
    if backend:
        return _evaluate_on_corpus_path(args, model_id, revision, split, max_windows, output, min_confidence,
                                        backend, shard_size)

    from .core.modeling import load_classifier
    from .core.predict import model_task
    from .core.tasks import MULTI_LABEL
    from .training.config import TrainConfig
    from .training.evaluation import evaluate_saved_model
    from .training.extra_metrics import load_extra_metrics

    # The flags' bounds are checked before the model loads (multi-label allows every value single-label does);
    # then against the model's own problem type.
    TrainConfig(**args, model_name_or_path=model_id, problem_type=MULTI_LABEL)
    model, tokenizer = load_classifier(model_id, revision)
    task = model_task(model)
    config = TrainConfig(**args, model_name_or_path=model_id, problem_type=task.problem_type)
    extra_metrics = load_extra_metrics(config.extra_metric_names(), task)
    metrics = evaluate_saved_model(model, tokenizer, config, split, max_windows, warn=_warn,
                                   min_confidence=min_confidence, extra_metrics=extra_metrics)
    _print_evaluation(split, metrics, output)
    return 0


def _evaluate_on_corpus_path(args: dict, model_id: str, revision: str | None, split: str, max_windows: int,
                             output: str | None, min_confidence: float | None, backend: str, shard_size: int) -> int:
    from .core.tasks import MULTI_LABEL
    from .corpus.engine import EngineOptions
    from .corpus.evaluation import evaluate_on_corpus_path
    from .training.config import TrainConfig
    from .training.extra_metrics import load_extra_metrics

    config = TrainConfig(**args, model_name_or_path=model_id, problem_type=MULTI_LABEL)  # the flags' bounds, first
    engine = EngineOptions(model=model_id, revision=revision or "", backend=backend, min_confidence=min_confidence,
                           max_length=config.max_length, max_windows=max_windows)
    metrics = evaluate_on_corpus_path(config, split, engine, shard_size,
                                      lambda task: load_extra_metrics(config.extra_metric_names(), task))
    if metrics is not None:  # the main process reports
        _print_evaluation(split, metrics, output)
    return 0


def _print_evaluation(split: str, metrics: dict, output: str | None) -> None:
    from .training.extra_metrics import EXTRA_METRICS, extra_scalars

    shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()
                      if isinstance(value, float) and name != "threshold")
    print(f"{split}: {shown} on {metrics['num_examples']} examples")
    print(_trust_line(metrics))
    width = max(map(len, metrics["per_class"]))
    for name, per_label in metrics["per_class"].items():
        print(f"  {name:<{width}} precision {per_label['precision']:.4f}  recall {per_label['recall']:.4f}  "
              f"f1 {per_label['f1']:.4f}")
    for name, value in extra_scalars(metrics.get(EXTRA_METRICS, {})).items():
        print(f"  {name} {value:.4f}")
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=2)


def _trust_line(metrics: dict) -> str:
    calibration, kept = metrics["calibration"]["after"], metrics["at_floor"]
    line = f"  calibration: NLL {calibration['nll']:.4f}, Brier {calibration['brier']:.4f}, ECE {calibration['ece']:.4f}"
    if kept["floor"] is None:
        return line + "; no confidence floor"
    accuracy = "-" if kept["accuracy"] is None else f"{kept['accuracy']:.4f}"
    return (line + f"; floor {kept['floor']:g}: answers {kept['kept']} of {kept['rows']} "
                   f"({kept['coverage']:.2%}), accuracy {accuracy}")


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _predict(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distrinews predict", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Classify texts with a model: the labels it gives (multi-label: every one at or above its "
        "threshold) and every label's probability. Texts on the command line, or a whole corpus with --input and "
        "--output: a CSV, JSON Lines or Parquet file, a folder of them, or a Hub dataset, in resumable shards, on "
        "the Space's int8 lanes (CPU) or torch in bf16/fp16 (GPU); under `accelerate launch ... -m distrinews "
        "predict` the shards are shared between the processes.")
    parser.add_argument("--model", required=True, help="Local folder or Hub repo id.")
    parser.add_argument("--revision", default=None, help="Branch, tag or commit sha of a Hub model.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per text.")
    _add_min_confidence(parser)
    parser.add_argument("texts", nargs="*", help="Texts to classify (or --input).")
    _add_corpus_flags(parser.add_argument_group("a corpus (--input)"))
    args = parser.parse_args(argv)
    if bool(args.texts) == bool(args.input):
        parser.error("give texts, or --input and --output, not both" if args.texts else
                     "give the texts to classify, or --input and --output")
    if args.input:
        return _predict_corpus(parser, args)
    from .core.texts import clean_text

    # Cleaned before the model loads (a bad argument costs no wait), and printed cleaned: an argument with bytes
    # that are not UTF-8 arrives as lone surrogates, which stdout cannot encode.
    texts = [clean_text(text) for text in args.texts]
    for number, (text, cleaned) in enumerate(zip(args.texts, texts), start=1):
        if not cleaned:
            parser.error(f"text {number} ({ascii(text)}) is empty or only whitespace, control or invisible characters")

    from .core.model_files import resolve_model_folder

    resolve_model_folder(args.model, args.revision)  # an unknown model fails before seconds of torch imports
    from .core.modeling import load_classifier
    from .core.predict import predict_texts

    model, tokenizer = load_classifier(args.model, args.revision)
    for text, prediction in zip(texts, predict_texts(model, tokenizer, texts, min_confidence=args.min_confidence)):
        if args.json:
            print(json.dumps({"text": text, **prediction.to_dict()}))
        else:
            shares = "  ".join(f"{name} {p:.3f}" for name, p in prediction.probabilities.items())
            given = ", ".join(prediction.labels) or "(no label)"
            if prediction.abstained:
                given = f"not sure (best guess {given}; confidence {prediction.confidence:.3f} < " \
                        f"{prediction.min_confidence:g})"
            print(f"{given:<9} {prediction.score:.3f}  | {shares}  | {text}")
    return 0


def _add_corpus_flags(group) -> None:
    from .corpus.command import BAD_ROW_CHOICES, DEFAULT_SHARD_ROWS
    from .corpus.engine import BACKENDS

    group.add_argument("--input", help="A .csv, .jsonl or .parquet file, a folder of them (read in name order), or a "
                       "Hub dataset id. Streamed: it may be larger than memory.")
    group.add_argument("--output", help="The predictions file: .parquet (also a name without a suffix), .csv or .jsonl. "
                       "Its shards and manifest go to OUTPUT.shards/, its bad rows to OUTPUT.bad_rows.jsonl.")
    group.add_argument("--split", default="train", help="The Hub dataset's split.")
    group.add_argument("--dataset_config_name", default="", help="The Hub dataset's configuration.")
    group.add_argument("--dataset_revision", default="", help="The Hub dataset's branch, tag or commit sha.")
    group.add_argument("--text_column_names", default="text", help="The text column, or several separated by "
                       "commas, joined by --text_column_delimiter (as training reads them). The original AG News "
                       "files give title,description.")
    group.add_argument("--text_column_delimiter", default=" ", help="What joins several text columns.")
    group.add_argument("--id_column", default="", help="A column copied into the output beside each prediction "
                       "(default: id, where the input has it). Every row also has its position, row.")
    group.add_argument("--backend", default="auto", choices=BACKENDS, help="auto: the int8 graph on a CPU (fp32 "
                       "torch where ONNX Runtime is missing or the graph disagrees), torch in bf16/fp16 on a GPU.")
    group.add_argument("--batch_size", type=int, default=0, help="Windows per model call (0: 32 on a CPU, as the "
                       "Space, 128 on a GPU).")
    group.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_ROWS, help="Input rows per shard: what a "
                       "rerun resumes from and what processes share out.")
    group.add_argument("--on_bad_row", default="skip", choices=BAD_ROW_CHOICES, help="A row without text (missing, "
                       "empty, not a string, not JSON): skip reports it in OUTPUT.bad_rows.jsonl and counts it; stop "
                       "ends the run there.")
    group.add_argument("--overwrite", action="store_true", help="Replace an output made from another model, input "
                       "or settings (otherwise refused).")
    group.add_argument("--quiet", action="store_true", help="No progress bar (the summary is still printed).")


def _predict_corpus(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .corpus.command import CorpusOptions, run_corpus
    from .corpus.engine import EngineOptions
    from .corpus.reading import ReadOptions

    if not args.output:
        parser.error("--input needs --output FILE (.parquet, .csv or .jsonl)")
    for name in ("batch_size", "shard_size"):
        if getattr(args, name) < (0 if name == "batch_size" else 1):
            parser.error(f"--{name} {getattr(args, name)}: must be >= {0 if name == 'batch_size' else 1}")
    columns = tuple(name.strip() for name in args.text_column_names.split(","))
    if not all(columns):
        parser.error(f"--text_column_names {args.text_column_names!r}: name one column, or several separated by commas")
    engine = EngineOptions(model=args.model, revision=args.revision or "", backend=args.backend,
                           batch_size=args.batch_size, min_confidence=args.min_confidence)
    options = CorpusOptions(input=args.input, output=args.output, engine=engine,
                            read=ReadOptions(columns, args.text_column_delimiter, args.id_column.strip()),
                            split=args.split, dataset_config_name=args.dataset_config_name,
                            dataset_revision=args.dataset_revision, shard_size=args.shard_size,
                            on_bad_row=args.on_bad_row, overwrite=args.overwrite, quiet=args.quiet)
    return run_corpus(options)


def _add_min_confidence(parser: argparse.ArgumentParser) -> None:
    def probability(value: str) -> float:
        number = float(value)
        if not 0 <= number <= 1:
            raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
        return number

    parser.add_argument("--min_confidence", type=probability, default=None, metavar="P",
                        help="Answer 'not sure' (abstained, with every probability and the best guess) when the "
                             "model's confidence is under P; 0 = never. Default: the floor the model was trained "
                             "with (config abstain_below, set by train --target_precision), if any.")


def _push(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distrinews push", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Push a finished run's model/ (with its model card and the int8 ONNX graph the Space serves) to "
        "the Hugging Face Hub in one commit. The token comes from HF_TOKEN or `hf auth login`; it is never printed "
        "or stored.")
    parser.add_argument("run_dir", help="The output_dir of a finished training run.")
    parser.add_argument("--repo_id", "--repo-id", required=True,
                        help="Hub repo to push to, USER/NAME (created if missing).")
    parser.add_argument("--private", action="store_true", help="Create the repo as private (an existing repo keeps "
                                                               "its visibility).")
    parser.add_argument("--revision", default=None, help="Branch to push to (created from main if missing).")
    args = parser.parse_args(argv)

    from .hub.push import push_run_to_hub

    record = push_run_to_hub(args.run_dir, args.repo_id, private=args.private, revision=args.revision)
    print(json.dumps(record))
    return 0


def _export_onnx(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distrinews export-onnx", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write the int8 ONNX graph the Space serves into MODEL_DIR/onnx/ (distrinews push does this too). A Space that finds it starts without torch and without exporting.")
    parser.add_argument("model_dir", help="A saved model folder, e.g. RUN_DIR/model.")
    args = parser.parse_args(argv)

    from .serving.export import export_serving_graph

    export_serving_graph(args.model_dir)
    return 0


def _deploy_space(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distrinews deploy-space", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Deploy the serving Space (app/ and the distrinews package, Docker SDK) to the Hugging Face Hub in one commit, wired to a model repo: the README header's `models:` "
        "names it and the Space variables MODEL_ID (and MODEL_REVISION) are set. Run from a clone of the "
        "repository. The token comes from HF_TOKEN or `hf auth login`; it is never printed or stored.")
    parser.add_argument("space_id", help="Space repo to deploy to, USER/NAME (created if missing).")
    parser.add_argument("--model_id", "--model-id", required=True, help="Model repo the Space serves, USER/NAME.")
    parser.add_argument("--revision", default=None, help="Pin the model to this commit sha (or branch/tag) via "
                                                         "MODEL_REVISION; without it the Space follows main.")
    parser.add_argument("--private", action="store_true", help="Create the Space as private (an existing Space "
                                                               "keeps its visibility).")
    parser.add_argument("--stage_only", "--stage-only", metavar="FOLDER", default=None,
                        help="Only write the Space repo into FOLDER (new or empty) and upload nothing, e.g. to "
                             "inspect it or `docker build FOLDER`.")
    args = parser.parse_args(argv)

    from .hub.space_deploy import check_repo_id, deploy_space, stage_space

    if args.stage_only:
        check_repo_id(args.space_id, "space id")
        folder = stage_space(args.stage_only, args.model_id, args.revision)
        record = {"space_id": args.space_id, "model_id": args.model_id, "revision": args.revision,
                  "staged": str(folder)}
    else:
        record = deploy_space(args.space_id, args.model_id, revision=args.revision, private=args.private)
    print(json.dumps(record))
    return 0


def _kaggle(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distrinews kaggle", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write a Kaggle bundle: OUTPUT/dataset (the distrinews wheel and dataset-metadata.json) and "
        "OUTPUT/kernel (the notebook and kernel-metadata.json: 2x T4, internet on, that dataset attached, "
        "private), for `kaggle datasets create -p OUTPUT/dataset` and `kaggle kernels push -p OUTPUT/kernel`. "
        "From a clone the wheel is built from the source; a pip-installed distrinews needs --wheel.")
    parser.add_argument("--output", required=True, help="New or empty folder to write the bundle into.")
    parser.add_argument("--dataset", required=True, help="Kaggle dataset to hold the wheel, USER/SLUG.")
    parser.add_argument("--kernel", default=None,
                        help="Kaggle notebook to push, USER/SLUG (default: USER/distrinews-ag-news, USER as in "
                             "--dataset).")
    parser.add_argument("--wheel", default=None, help="Ship this distrinews wheel instead of building one.")
    args = parser.parse_args(argv)

    from .kaggle.bundle import write_bundle

    print(write_bundle(args.output, args.dataset, kernel=args.kernel, wheel=args.wheel).next_steps())
    return 0


def _launch(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distrinews launch", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        description="Train with `accelerate launch` on every GPU of this machine, one process each (DDP over "
        "NCCL), or on 2 CPU processes (gloo) without a GPU, in the fastest precision that keeps accuracy: bf16 "
        "autocast over fp32 weights on GPUs and CPUs with bf16 units (AVX512_BF16, AMX), fp16 on older GPUs, fp32 "
        "on other CPUs. The shipped YAML is picked from the GPUs nvidia-smi lists; every other option goes to "
        "distrinews.train (`distrinews train --help` lists them).")
    parser.add_argument("--dry_run", "--dry-run", action="store_true",
                        help="Print the accelerate launch command and exit.")
    parser.add_argument("--main_process_port", "--main-process-port", type=int, default=None,
                        help="TCP port the processes meet on (accelerate's default 29500 when not given); set "
                             "it to run two trainings on one machine.")
    parser.add_argument("--mixed_precision", "--mixed-precision", choices=PRECISION_CHOICES, default="auto",
                        help="The precision to train in; auto chooses it from the hardware, as above.")
    args, train_argv = parser.parse_known_args(argv)
    from .launch.launcher import launch

    return launch(train_argv, dry_run=args.dry_run, main_process_port=args.main_process_port,
                  mixed_precision=args.mixed_precision)


def _sweep(argv: Sequence[str]) -> int:
    from .sweep.command import main as sweep_main

    return sweep_main(argv)


def _launch_config(argv: Sequence[str]) -> int:
    from .launch.configs import LAUNCH_CONFIG_NAMES, launch_config_path

    parser = argparse.ArgumentParser(
        prog="distrinews launch-config", description="Print the path of a shipped accelerate YAML, e.g. "
        'accelerate launch --config_file "$(distrinews launch-config multi_gpu)" -m distrinews.train ...')
    parser.add_argument("name", choices=LAUNCH_CONFIG_NAMES)
    args = parser.parse_args(argv)
    print(launch_config_path(args.name))
    return 0


def _compare(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distrinews compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="One table of finished runs' setups and results: runs that differ only in their seed form a "
        "group, shown with the mean, standard deviation, min and max over its seeds of each metric on validation "
        "and test, its time and samples/s; each later group is compared with the first on the seeds they share "
        "(paired t-test). Markdown on stdout.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="Run folders, folders of runs (a sweep's "
                        "trial-NNNN/), or globs of either (quoted globs are expanded here).")
    parser.add_argument("--output", default=None, help="Also write the table to FILE.md (with the paired "
                        "comparisons) or FILE.csv (one column per number).")
    parser.add_argument("--plot", default=None, help="Write a PNG of each group's test metric, its seeds as dots.")
    parser.add_argument("--metric", default=None, help="The metric compared (default: accuracy, or micro_f1 for "
                        "multi-label); macro_f1 is shown too.")
    args = parser.parse_args(argv)
    from .compare.command import compare_runs

    print(compare_runs(args.runs, output=args.output, plot=args.plot, metric=args.metric))
    return 0


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "train": (_train, "fine-tune a classifier (one process; `accelerate launch -m distrinews.train` for more)"),
    "evaluate": (_evaluate, "the metrics and per-label scores of a saved model on a split"),
    "predict": (_predict, "classify texts, or a corpus (files, a folder, a Hub dataset), with a local or Hub model"),
    "push": (_push, "push a finished run's model, model card and int8 graph to the Hub"),
    "export-onnx": (_export_onnx, "write the int8 ONNX graph the Space serves into a model folder"),
    "launch": (_launch, "train with accelerate launch on every GPU found (2 CPU processes without one)"),
    "sweep": (_sweep, "search training options with Optuna, each trial a resumable run (--launch: every GPU)"),
    "launch-config": (_launch_config, "print the path of a shipped accelerate YAML (cpu, single_gpu, multi_gpu, multi_node)"),
    "deploy-space": (_deploy_space, "deploy the serving Space wired to a model repo"),
    "kaggle": (_kaggle, "write the wheel dataset and the notebook kernel for the kaggle CLI"),
    "compare": (_compare, "one table of runs' results, seeds grouped: mean, std, min, max, paired t-test"),
}


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: distrinews COMMAND [options]   (distrinews COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this list", "  --version   print the version"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(_overview())
        return 0
    if argv[:1] == ["--version"]:
        print(f"distrinews {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        problem = f"distrinews: unknown command {argv[0]!r}\n\n" if argv else ""
        print(problem + _overview(), file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except Exception as err:
        code = exit_code_for(err)  # distrinews/core/errors.py: one line for the user, not a traceback
        if code is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return code
