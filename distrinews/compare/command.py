"""``distrinews compare RUN_DIR...``: runs, sweep folders or globs, as one table of setups and results.

    distrinews compare runs/default-seed-* runs/best-seed-*                 # Markdown on stdout
    distrinews compare sweeps/lr --output results.csv --plot seeds.png
    distrinews compare "runs/*" --metric macro_f1                            # quoted globs are expanded here

Runs that differ only in their seed (and in what does not change results: where files go, logging, the Hub)
form one group; the first group is the baseline of the paired comparisons (docs/README-compare.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ..core.atomic import write_text
from ..core.errors import InputError
from .report import csv_table, headline_metric, markdown_table, paired_lines, plot_seeds
from .runs import differing_fields, find_runs, group_runs

OUTPUT_SUFFIXES = (".md", ".csv")


def compare_runs(arguments: Sequence[str], output: str | None = None, plot: str | None = None,
                 metric: str | None = None) -> str:
    """The Markdown report (table and paired comparisons); also writes ``output`` (.md or .csv) and ``plot``."""
    if output and Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"--output {output}: must end in .md or .csv")
    found = find_runs(arguments)
    if found.unfinished:
        print(f"left out {len(found.unfinished)} unfinished run(s) without metrics.json (pruned, failed or "
              f"running): {', '.join(str(folder) for folder in found.unfinished)}", file=sys.stderr)
    groups = group_runs(found.runs)
    fields = differing_fields(groups)
    headline = metric or headline_metric(found.runs)
    metrics = list(dict.fromkeys([headline, "macro_f1"]))
    report = markdown_table(groups, fields, metrics)
    comparisons = paired_lines(groups, headline)
    if comparisons:
        report += "\n\n" + "\n".join(f"- {line}" for line in comparisons)
    if output:
        text = csv_table(groups, fields, metrics) if output.lower().endswith(".csv") else report + "\n"
        write_text(Path(output), text)
    if plot:
        plot_seeds(groups, fields, headline, Path(plot))
    return report
