"""Choosing how to run a training: the launch plan from the hardware found (processes, precision, the shipped
accelerate YAML), the checks made once before any rank starts, the CPU cost estimate, and ``distrinews launch``,
which runs accelerate's launcher with them. Above ``training/`` and ``hub/``; neither imports it.
"""
