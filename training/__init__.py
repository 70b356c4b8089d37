"""Training recipes: the project's own models, trained in torch and exported.

May import torch, sentencepiece, sacrebleu, :mod:`cnmt.exporters` (to export what it trained)
and :mod:`cnmt.runtime` (to evaluate the export); nothing imports this package but the training
command (``python -m cnmt.training.gru``, ``scripts/train-gru-fr-en``).
"""
