"""The shared core: the task objects, dataset presets, text rules, the one loader and the one predict path, the
errors.

Imports neither training nor serving libraries (no accelerate, datasets, fastapi, gradio, onnxruntime).
"""
