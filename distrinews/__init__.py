"""DistriNews: fast, resumable data-parallel fine-tuning of news-topic classifiers."""

__version__ = "0.1.0"
