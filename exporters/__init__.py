"""Exporters: build or load the model families in torch and export them to ONNX graphs.

Each family's exporter writes a model directory (graphs, vocabularies, ``manifest.json``) and
validates it against torch right after export. Torch is imported inside the exporters' methods
only. May import the core and ``cnmt.runtime`` (to validate what it wrote); nothing imports an
exporter except the built-in plugin, the commands, and what exports a built-in model on first
use.
"""
