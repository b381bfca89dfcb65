"""The Space's web layer (FastAPI, Gradio, prometheus_client: the ``space`` extra): ``create_app``."""

from .factory import create_app

__all__ = ["create_app"]
