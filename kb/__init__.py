"""kb: a knowledge-base service over a persistent cosine Chroma collection."""

__version__ = "0.1.0"
