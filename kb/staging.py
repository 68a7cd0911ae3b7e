"""`kb restore --replace` on an embedded store: the backup is written into a collection beside
the store's ('<name>-kb-new'), which takes the store's name only once whole. It emptied the
collection first, so a failure part-way (a full disk) lost what it held.

The switch is two renames: the old collection to '<name>-kb-old', the new one to the store's
name; the old one is then emptied and deleted. A process killed between the two renames
leaves no collection of the store's name, and the next open finishes the switch
(`finish_restore`); killed before the first, the new collection is dropped at the next open
and the store is as it was. (On a Chroma server other processes hold the collection by its
id, which the switch would change under them: there a restore still replaces in place.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kb.errors import KBError

if TYPE_CHECKING:
    from kb.collection import RecordCollection

log = logging.getLogger(__name__)

NEW, OLD = "kb-new", "kb-old"  # suffixes of the collections beside the store's
WHOLE_KEY = "kb_restore_whole"  # set on the new collection once every record is in it


def switch(records: RecordCollection, new: RecordCollection) -> None:
    """Put `new` (filled) in the place of `records`, whose object then serves it; the old
    collection is deleted."""
    new.set_settings_value(WHOLE_KEY, True)
    name = records.name
    old = records.view()  # keeps naming the old collection once `records` serves the new
    old.rename(f"{name}-{OLD}")
    new.rename(name)
    new.take_place_of(records)
    records.set_settings_value(WHOLE_KEY, None)
    try:
        old.drop()
    except KBError:  # the restore is done; the store's next open removes it
        log.warning("could not remove the replaced collection %s", old.name, exc_info=True)


def finish_restore(records: RecordCollection) -> None:
    """At an embedded store's open: finish a switch a killed restore began, drop what one
    killed before its switch wrote beside the store."""
    names = records.collection_names()
    new, old = f"{records.name}-{NEW}", f"{records.name}-{OLD}"
    if new in names:
        staged = records.beside(NEW)
        if records.name not in names and staged.settings_value(WHOLE_KEY):
            staged.rename(records.name)
            staged.set_settings_value(WHOLE_KEY, None)
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
    if old in names:
        records.beside(OLD).drop()
