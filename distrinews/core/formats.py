"""Dataset presets: what is known about a dataset beyond its rows (layout, label names, how to describe and cite it).

Any labelled text trains as the generic format, described by its own columns and labels. AG News is the preset
the project started from: the original CSVs (``class_index,title,description`` with class index 1..4, no header
or Kaggle's ``Class Index,Title,Description``) keep headline and description apart, which ``headline_views``
needs, and the model card names the dataset, its terms and its citation. Training (``distrinews.training.data``)
and the Space's CSV upload (``distrinews.serving.service``) read the layout from here. Plain Python: no
``datasets``, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class DatasetPreset:
    key: str  # recorded in metrics.json ("data" -> "preset")
    name: str  # as the model card names the dataset
    hub_ids: tuple[str, ...]
    original_columns: tuple[str, ...]  # the columns of the original CSV files, in order
    class_indices: tuple[str, ...]  # the original files' label values, in label order
    label_names: tuple[str, ...]
    test_size: int  # rows of the official test split
    domain: str  # what the texts are, for the card's intended-use section
    terms: str
    citation: str

    def is_original_header(self, header: Sequence[str]) -> bool:
        """Kaggle's copy: "Class Index,Title,Description" (any case, spaces or underscores)."""
        return [name.strip().lower().replace(" ", "_") for name in header] == list(self.original_columns)

    def is_original_row(self, row: Sequence[str]) -> bool:
        """A data row of the original files: a class index, then headline and description."""
        return len(row) == len(self.original_columns) and row[0].strip() in self.class_indices

    def describes(self, dataset: str) -> bool:
        return dataset in self.hub_ids


AG_NEWS = DatasetPreset(
    key="ag_news",
    name="AG News",
    hub_ids=("fancyzhx/ag_news", "ag_news"),
    original_columns=("class_index", "title", "description"),
    class_indices=("1", "2", "3", "4"),
    label_names=("World", "Sports", "Business", "Sci/Tech"),
    test_size=7600,
    domain="English news headlines and short article descriptions (title + description) from 2004-2005",
    terms="AG News (Zhang, Zhao and LeCun, 2015) was built from AG's corpus of news articles, collected by the "
          "ComeToMyHead academic news search engine and made available to the academic community for research and "
          "other non-commercial use; the dataset's Hub card lists its license as unknown. Check those terms before "
          "any commercial use of this model.",
    citation="""\
@inproceedings{zhang2015character,
  title     = {Character-level Convolutional Networks for Text Classification},
  author    = {Zhang, Xiang and Zhao, Junbo and LeCun, Yann},
  booktitle = {Advances in Neural Information Processing Systems 28 (NIPS 2015)},
  pages     = {649--657},
  year      = {2015}
}""",
)
PRESETS = {preset.key: preset for preset in (AG_NEWS,)}


def preset_named(key: str | None) -> DatasetPreset | None:
    return PRESETS.get(key or "")


def dataset_display_name(dataset: str, preset: DatasetPreset | None) -> str:
    """How the card and the Space name the data: the preset's name, the Hub id, or the local folder's name."""
    if preset is not None:
        return preset.name
    return Path(dataset).name if Path(dataset).exists() else dataset
