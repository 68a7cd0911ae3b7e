"""The kb command line: a thin front over the service layer, one module per concern."""

import signal
import sys

try:
    from kb.cli import calibrate, data, quality, serve
    from kb.cli.base import main
except KeyboardInterrupt:  # a Ctrl-C in the second or so its modules take to load: one
    # line and 130, as a command's Ctrl-C (kb.cli.base.interrupted); it was a traceback of
    # the import under way (review helper 91)
    sys.stderr.write("\nkb interrupted\n")
    sys.exit(128 + signal.SIGINT)

__all__ = ["calibrate", "data", "main", "quality", "serve"]
