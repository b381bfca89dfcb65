"""Training: the config, data, the loop (``loop.py``, the only user of the ``Accelerator``) and its parts.
"""
