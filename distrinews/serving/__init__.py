"""Serving: the Space's model service, backends, micro-batcher and explanations.
"""
