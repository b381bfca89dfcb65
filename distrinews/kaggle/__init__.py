"""The Kaggle bundle: the wheel as a dataset and the notebook as a kernel, for the official ``kaggle`` CLI."""
