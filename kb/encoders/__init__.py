"""Encoder backends behind the `kb.embeddings.Embedder` protocol: ONNX Runtime and torch."""
