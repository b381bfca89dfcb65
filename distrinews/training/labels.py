"""The label set of a run, read from its training data, and every split's labels as label indices.

Where the names come from, in order:

- ``label_names`` given (``--label_names a,b,c``): those names in that order. String labels must be among them;
  integer labels are indices into them.
- a ``ClassLabel`` column (a Hub dataset, or a file ``datasets`` wrote): its names, in its order.
- string labels: every distinct label of the training split, sorted by code point (Python's ``sorted``), so
  every rank, machine and rerun gets the same order from the same data, whatever order the rows come in.
- integer labels: ``LABEL_0`` .. ``LABEL_<largest>``, as transformers names them.

Multi-label rows hold a list of such labels (JSONL/Parquet lists, a ``Sequence(ClassLabel)``) or, in a CSV, a
string cut at ``label_separator``; an empty list or string is a row with no label. A label in validation or
test that training never saw, a single label in all, or a column mixing integers and strings stops the run
before anything is written, naming the file, the row and the label.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..core.errors import DataError

_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class RawLabels:
    """One split's label column as read: one value per row, and where those rows are."""

    values: list[Any]
    where: str  # the file, or "dataset 'ID' split 'NAME'"
    first_row: int  # the file row (or dataset index) of the first value
    class_names: tuple[str, ...] = ()  # a ClassLabel column's names (then values are indices)
    from_text_file: bool = False  # CSV cells: integers arrive as digit strings

    def row(self, index: int) -> int:
        return index + self.first_row


@dataclass(frozen=True)
class LabelRules:
    multi_label: bool = False
    label_names: tuple[str, ...] = ()
    separator: str = ""  # cuts a CSV cell into a multi-label row's labels


def label_set(train: RawLabels, rules: LabelRules) -> tuple[str, ...]:
    """The run's label names, from the training split (see the module docstring for the order)."""
    rows = _rows_of_labels(train, rules)
    kind = _label_kind(train, rows)
    if kind == "int" and (rules.label_names or train.class_names):
        names = rules.label_names or train.class_names
        _check_indices(train, rows, len(names), "label_names" if rules.label_names else "the ClassLabel names")
    elif kind == "int":
        _check_indices(train, rows, 0, "")
        _check_no_gaps(train, rows)
        names = tuple(f"LABEL_{i}" for i in range(max((v for r in rows for v in r), default=-1) + 1))
    elif rules.label_names:
        names = rules.label_names
        _check_known(train, rows, names, "is not one of label_names")
    else:
        names = tuple(sorted({v for r in rows for v in r}))
    seen = {v for r in rows for v in r}
    if len(seen) < 2:
        found = ", ".join(repr(_name(v, names)) for v in sorted(seen, key=str)) or "none"
        raise DataError(f"{train.where}: the training rows hold {len(seen)} distinct label(s) ({found}); a "
                        "classifier needs at least 2")
    return tuple(names)


def encode_labels(raw: RawLabels, rules: LabelRules, names: Sequence[str], seen_in_training: set[int] | None):
    """Label indices per row (single-label) or 0/1 rows of ``len(names)`` (multi-label).

    ``seen_in_training`` (None for the training split itself, or for a saved model's labels) refuses labels
    that the training rows never held."""
    rows = _rows_of_labels(raw, rules)
    if _label_kind(raw, rows) == "str":
        _check_known(raw, rows, names, "is not one of label_names" if rules.label_names
                     else "never appears in the training rows")
        position = {name: i for i, name in enumerate(names)}
        rows = [[position[v] for v in row] for row in rows]
    if seen_in_training is not None:
        for index, row in enumerate(rows):
            unseen = [v for v in row if v not in seen_in_training]
            if unseen:
                raise DataError(f"{raw.where}: row {raw.row(index)}: label {_name(unseen[0], names)!r} never "
                                "appears in the training rows, so the model cannot learn it; add training rows "
                                "with it or drop these rows")
    _check_indices(raw, rows, len(names), "the labels")
    if not rules.multi_label:
        return [row[0] for row in rows]
    return [_one_hot(row, len(names)) for row in rows]


def _one_hot(indices: list[int], size: int) -> list[int]:
    row = [0] * size
    for index in indices:
        row[index] = 1
    return row


def labels_in(encoded: Sequence, multi_label: bool) -> set[int]:
    """The label indices that occur in an encoded split."""
    if not multi_label:
        return set(encoded)
    return {i for row in encoded for i, on in enumerate(row) if on}


def _rows_of_labels(raw: RawLabels, rules: LabelRules) -> list[list[Any]]:
    """Each row's labels as a list of ints or strings (one element per row for single-label)."""
    rows = []
    for index, value in enumerate(raw.values):
        if rules.multi_label:
            items = _multi_label_items(raw, index, value, rules.separator)
        else:
            items = [_single_label(raw, index, value)]
        rows.append([_normalised(raw, index, item) for item in items])
    return rows


def _single_label(raw: RawLabels, index: int, value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()) or _is_nan(value):
        raise DataError(f"{raw.where}: row {raw.row(index)}: no label")
    if isinstance(value, (list, tuple)):
        raise DataError(f"{raw.where}: row {raw.row(index)}: label {value!r} is a list; one label per row is "
                        "single-label classification (for several, set problem_type=multi_label_classification)")
    return value


def _multi_label_items(raw: RawLabels, index: int, value: Any, separator: str) -> list[Any]:
    if value is None or _is_nan(value):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and separator:
        return [part.strip() for part in value.split(separator) if part.strip()]
    if isinstance(value, str) and not value.strip():
        return []
    raise DataError(f"{raw.where}: row {raw.row(index)}: label {value!r} is not a list of labels; multi-label rows "
                    "are lists (JSONL, Parquet) or strings cut by label_separator (e.g. --label_separator '|' "
                    "for 'sport|tech' in a CSV)")


def _normalised(raw: RawLabels, index: int, value: Any) -> int | str:
    """An int for integer labels (digit strings of a CSV too), a stripped string for names."""
    if isinstance(value, bool):
        return str(value).lower()  # a true/false column: the names "false" and "true"
    if isinstance(value, float) and value.is_integer():
        return int(value)  # pandas writes an integer column with gaps as floats
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return int(text) if raw.from_text_file and _INTEGER.fullmatch(text) else text
    raise DataError(f"{raw.where}: row {raw.row(index)}: label {value!r} is neither an integer nor a name")


def _label_kind(raw: RawLabels, rows: list[list[Any]]) -> str:
    """"int" or "str"; a column holding both stops, naming the first row of the kind there is less of."""
    kinds = [(index, item) for index, row in enumerate(rows) for item in row]
    ints = [(i, v) for i, v in kinds if isinstance(v, int)]
    texts = [(i, v) for i, v in kinds if isinstance(v, str)]
    if ints and texts:
        odd_index, odd = min(ints, texts, key=len)[0]
        other_index, other = max(ints, texts, key=len)[0]
        raise DataError(f"{raw.where}: row {raw.row(odd_index)}: label {odd!r} is "
                        f"{'an integer' if isinstance(odd, int) else 'a name'}, but row {raw.row(other_index)}'s "
                        f"label {other!r} is {'an integer' if isinstance(other, int) else 'a name'}; one label "
                        "column holds one kind (name the integers' labels with --label_names instead)")
    return "int" if ints or raw.class_names else "str"


def _check_indices(raw: RawLabels, rows: list[list[Any]], count: int, names_from: str) -> None:
    for index, row in enumerate(rows):
        for value in row:
            if value < 0 or (count and value >= count):
                rule = f"an index into {names_from} (0..{count - 1})" if names_from else "a label index (>= 0)"
                raise DataError(f"{raw.where}: row {raw.row(index)}: label {value} is not {rule}")


def _check_no_gaps(raw: RawLabels, rows: list[list[Any]]) -> None:
    """Integer labels without names are indices 0..N-1: one that skips some (a typo, most often) would make
    labels the model never sees."""
    seen = {v for row in rows for v in row}
    missing = sorted(set(range(max(seen, default=-1) + 1)) - seen)
    if missing:
        index = next(i for i, row in enumerate(rows) if any(v > missing[0] for v in row))
        skipped = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise DataError(f"{raw.where}: row {raw.row(index)}: label {max(rows[index])} skips label(s) {skipped}, "
                        "which no training row has: integer labels are indices 0..N-1; give every label a name "
                        "with --label_names (then unused indices are allowed) or write the labels as names")


def _check_known(raw: RawLabels, rows: list[list[Any]], names: Sequence[str], problem: str) -> None:
    known = set(names)
    for index, row in enumerate(rows):
        for value in row:
            if value not in known:
                listed = ", ".join(map(repr, names[:10])) + (", ..." if len(names) > 10 else "")
                raise DataError(f"{raw.where}: row {raw.row(index)}: label {value!r} {problem} ({listed})")


def _name(value: Any, names: Sequence[str]) -> Any:
    return names[value] if isinstance(value, int) and 0 <= value < len(names) else value


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
