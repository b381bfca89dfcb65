"""``distrinews compare``: runs read back from their folders, grouped by setup across seeds, summarized and tested.

``runs.py`` finds and reads the run folders and groups them, ``stats.py`` holds the arithmetic (summaries and the
paired t-test), ``report.py`` writes the table, the plot and the paired comparisons (docs/README-compare.md).
"""
