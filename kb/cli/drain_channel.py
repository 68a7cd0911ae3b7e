"""waitress's connection (channel) and task for kb serve's drain (kb.cli.drain), imported
with waitress. Once the drain has begun, an answer says `Connection: close`, and its
connection closes once it is sent. Answers finished during the drain said nothing, so an
HTTP/1.1 client sent its next request into a connection about to close (review helper 86).
"""

from __future__ import annotations

from typing import Any

from waitress.channel import HTTPChannel
from waitress.task import WSGITask


def _closes(task: Any) -> None:
    """During the drain, an answer closes its connection; set while its headers are built
    (waitress then says Connection: close and closes)."""
    if task.channel.draining:
        task.request.headers["CONNECTION"] = "close"


class _Task(WSGITask):
    def build_response_header(self) -> bytes:
        _closes(self)
        return super().build_response_header()


class DrainingChannel(HTTPChannel):
    task_class = _Task
    draining = False

    def drain(self) -> None:
        """The drain begins (called by the thread of waitress's loop)."""
        self.draining = True
