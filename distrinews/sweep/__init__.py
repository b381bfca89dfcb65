"""Hyperparameter sweeps on Optuna (``distrinews sweep``): the search space (space.py), the study in its storage
(study.py), each trial an ordinary run folder (trials.py) with pruning from its evaluations (pruning.py), and the
table, plots and best trial (report.py); sweep.py runs them in order. Nothing here is imported by a run without a
sweep, so Optuna is needed only for sweeps (the ``sweep`` extra)."""
