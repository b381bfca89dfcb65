"""The Hub: pushing a run (model, card, int8 graph) and deploying the Space.
"""
