"""The shared core: label names, text rules, the one loader and the one predict path, the errors.

Imports neither training nor serving libraries (no accelerate, datasets, fastapi, gradio, onnxruntime).
"""
