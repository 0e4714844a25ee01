"""Write files under a temporary name and rename them into place.

An interrupted or failed write then never leaves a truncated file under the
final name, and never destroys a good file that was already there. The data is
flushed to disk before the rename, so this holds after a power cut too.
"""

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file


@contextlib.contextmanager
def atomic_path(final):
    """Yield a temporary path beside ``final``; on success rename it to ``final``.

    The temporary name keeps the final suffix because some writers (Keras's
    ``model.save``, h5py) decide the format from it. The file gets the mode a
    plain ``open()`` would give it (an existing file's mode is kept), not the
    private mode of a temporary file.
    """
    final = Path(final)
    for folder in (final.parent, *final.parent.parents):
        if folder.exists() and not folder.is_dir():
            raise InputError(folder, f"is a file, not a folder, so {final} cannot be written")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{''.join(final.suffixes)}",
                               dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        mode = stat.S_IMODE(final.stat().st_mode) if final.exists() else _NEW_FILE_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, final)
        _fsync_directory(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not possible on every file system; then skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(final, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final, text: str) -> None:
    write_bytes(final, text.encode("utf-8"))
