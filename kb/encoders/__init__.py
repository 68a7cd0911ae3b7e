"""Encoder backends behind the `kb.embeddings.Embedder` protocol: ONNX Runtime
(or OpenVINO) and torch."""
