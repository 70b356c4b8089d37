"""Exporters: build or load the model families in torch and export them to ONNX graphs."""
