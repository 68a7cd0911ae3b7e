"""Writing a file whole or not at all: a temporary file beside it, renamed into place."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from kb.errors import KBError

NAME_MAX = 255  # bytes a file name may have


@contextmanager
def replacing(dest: Path, *, parents: bool = False) -> Iterator[Path]:
    """Where to write `dest`'s new contents: a temporary file beside it (beside the file a
    link points to) that takes its name once the block ends without error and is removed
    otherwise, so a failed write leaves `dest` as it was and nothing else behind. A device
    or a pipe (/dev/null, /dev/stdout) is written as it is: a file renamed over it would
    replace it. `parents`: missing folders are made. An OSError (no permission, no such
    folder, a full disk) becomes a KBError naming `dest`, one line on the command line
    rather than a traceback."""
    special = str(dest).startswith(("/dev/", "/proc/")) or (
        os.path.exists(dest) and not os.path.isfile(dest) and not os.path.isdir(dest)
    )  # /dev/stdout redirected to a file (`>> log`) is written to, not renamed over
    target = dest if special else Path(os.path.realpath(dest))
    partial = target if special else target.with_name(_partial_name(target.name))
    try:
        if parents:
            target.parent.mkdir(parents=True, exist_ok=True)
        if partial != target:
            _create(partial, target)
        yield partial
        if partial != target:
            if target.is_file():  # a file kept private (0600) stays so
                shutil.copymode(target, partial)
            partial.replace(target)
    except OSError as exc:
        raise _unwritable(dest, partial, exc) from None
    finally:
        if partial != target:
            with suppress(OSError):
                partial.unlink(missing_ok=True)


def _create(partial: Path, target: Path) -> None:
    """Make `partial` empty, as private as `target` from the start (its mode; a new file's,
    the umask's): created at the first write with the umask's, it held the data of a 0600
    file readable by every user until the rename. Its owner may read and write it (a 0444
    file is written, and given its mode at the rename). A leftover of this name (an earlier
    process with the same id, killed) is replaced."""
    mode = stat.S_IMODE(target.stat().st_mode) & 0o777 | 0o600 if target.is_file() else 0o666
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


def check_writable(dest: Path) -> None:
    """A KBError, as `replacing` would raise it, unless `dest` can be made: its folder exists
    and may be written (for a command that writes only after long work, to say so first)."""
    folder = dest.parent
    if not folder.is_dir():
        raise KBError(f"cannot write {dest}: {folder} is not a folder", code="unwritable")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise KBError(f"cannot write {dest}: {folder} is not writable", code="unwritable")


def _partial_name(name: str) -> str:
    """The temporary file's name: DEST's own with the process id and `.partial`, or a short
    one when that would pass the NAME_MAX bytes a file name may have."""
    partial = f"{name}.{os.getpid()}.partial"
    return partial if len(os.fsencode(partial)) <= NAME_MAX else f".kb-{os.getpid()}.partial"


def _unwritable(dest: Path, partial: Path, exc: OSError) -> KBError:
    """`cannot write DEST: problem`, naming the folder at fault when it is not DEST's own
    file (a parent that is a file, say)."""
    problem = exc.strerror or str(exc)
    if isinstance(exc, FileExistsError):  # what mkdir says of a file where a folder should be
        problem = "not a directory"
    if exc.filename is not None and Path(os.fsdecode(exc.filename)) not in (dest, partial):
        problem = f"{os.fsdecode(exc.filename)}: {problem}"
    return KBError(f"cannot write {dest}: {problem}", code="unwritable")
