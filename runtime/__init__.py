"""Runtime: ONNX Runtime sessions, tokenizers and decode loops. Never imports torch."""
