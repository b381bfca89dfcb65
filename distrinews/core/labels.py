"""The AG News topics, in the dataset's label order (class index 1..4 in the original CSVs is label 0..3)."""

LABEL_NAMES = ("World", "Sports", "Business", "Sci/Tech")
