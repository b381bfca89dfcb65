"""Classifying a whole corpus: ``distrinews predict --input`` (command.py) over files, folders and Hub datasets,
streamed (reading.py), in shards written atomically with a manifest (shards.py), on the Space's own model and lanes
(engine.py)."""
