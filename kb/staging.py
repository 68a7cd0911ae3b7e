"""`kb restore --replace` on an embedded store: the backup is written into a collection beside
the store's ('<name>-kb-new'), which takes the store's name only once whole. It emptied the
collection first, so a failure part-way (a full disk) lost what it held.

The switch is two renames: the old collection to '<name>-kb-old', the new one to the store's
name (the caller holds signals meanwhile: `signals_held`); the old one is then emptied and
deleted (`retire`). A process killed between the two renames leaves no collection of the
store's name, and the next open finishes the switch (`finish_restore`); killed before the
first, the new collection is dropped at the next open and the store is as it was. Both side
collections carry the store's name (OWNER_KEY): a collection of another store that happens
to be named so is never touched (review helper 97). (On a Chroma server other processes hold
the collection by its id, which the switch would change under them: there a restore still
replaces in place.)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from kb.config import NEW_SUFFIX, OLD_SUFFIX
from kb.errors import KBError

if TYPE_CHECKING:
    from kb.collection import RecordCollection

log = logging.getLogger(__name__)

NEW, OLD = NEW_SUFFIX, OLD_SUFFIX  # of the collections beside the store's
SUFFIXES = (NEW, OLD)
OWNER_KEY = "kb_restore_of"  # the store's name, on both: the collections kb made
WHOLE_KEY = "kb_restore_whole"  # set on the new collection once every record is in it
MARKS = (OWNER_KEY, WHOLE_KEY)  # never copied to the new collection from the store's


class SwitchUnfinished(KBError):
    """The second rename failed, and so did putting the old collection's name back: the
    restored records are whole beside the store, which its next open puts in place."""


def stamp(records: RecordCollection) -> dict[str, Any]:
    """The settings that mark a collection as one kb made beside `records`."""
    return {OWNER_KEY: records.name}


def switch(records: RecordCollection, new: RecordCollection) -> RecordCollection:
    """Put `new` (filled) in the place of `records`, whose object then serves it; the old
    collection, renamed, for `retire`. A store error in a rename puts the names back (the
    store keeps what it held) or, if that fails too, is a SwitchUnfinished."""
    name = records.name
    new.set_settings_value(WHOLE_KEY, True)
    old = records.view()  # keeps naming the old collection once `records` serves the new
    old.set_settings_value(OWNER_KEY, name)
    old.rename(f"{name}-{OLD}")
    try:
        new.rename(name)
    except KBError as exc:
        try:
            old.rename(name)
        except KBError:
            raise SwitchUnfinished(
                f"{exc.message}; the restored records are whole beside the store, which its "
                "next open puts in place",
                code=exc.code,
                status=exc.status,
            ) from exc
        old.set_settings_value(OWNER_KEY, None)
        raise
    new.take_place_of(records)
    for key in MARKS:
        records.set_settings_value(key, None)
    return old


def retire(side: RecordCollection) -> None:
    """Delete a collection beside the store (the one a switch replaced, or a new one a failed
    restore filled); a store error leaves it to the store's next open."""
    try:
        side.drop()
    except KBError:
        log.warning("could not remove the collection %s", side.name, exc_info=True)


def finish_restore(records: RecordCollection) -> None:
    """At an embedded store's open: finish a switch a killed restore began, drop what one
    killed before its switch wrote beside the store, and a replaced collection left."""
    names = records.collection_names()
    new, old = (f"{records.name}-{suffix}" for suffix in SUFFIXES)
    if new in names and _ours(staged := records.named(new), records):
        if records.name not in names and staged.settings_value(WHOLE_KEY):
            staged.rename(records.name)
            for key in MARKS:
                staged.set_settings_value(key, None)
            log.warning(
                "collection '%s': a restore --replace was killed as it switched to the "
                "restored records; the switch is done",
                records.name,
            )
        else:
            log.warning(
                "collection '%s': removing the records a restore --replace killed part-way "
                "wrote beside it (the collection is as it was before that restore)",
                records.name,
            )
            staged.drop()
    if old in names and _ours(replaced := records.named(old), records):
        replaced.drop()
    if records.name in names:  # killed after its renames, before it cleared its marks
        current = records.named(records.name)
        for key in MARKS:
            if current.settings_value(key) is not None:
                current.set_settings_value(key, None)


def _ours(side: RecordCollection, records: RecordCollection) -> bool:
    return bool(side.settings_value(OWNER_KEY) == records.name)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then act as they would have: around
    the switch, whose caller then knows which side of it a Ctrl-C came (a Ctrl-C inside it
    said the store was partial, whether it was as it was or restored: review helper 97).
    Only the main thread can hold them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    kinds = (signal.SIGINT, signal.SIGTERM)
    before = {kind: signal.signal(kind, hold) for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in before.items():
            signal.signal(kind, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)
