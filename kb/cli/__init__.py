"""The kb command line: a thin front over the service layer, one module per concern."""

from kb.cli import data, quality, serve
from kb.cli.base import main

__all__ = ["data", "main", "quality", "serve"]
