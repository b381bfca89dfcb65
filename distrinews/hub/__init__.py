"""The Hub: pushing a run (model, card, int8 graph), checkpoints on the Hub, the training loop's Hub listeners, and
deploying the Space.
"""
