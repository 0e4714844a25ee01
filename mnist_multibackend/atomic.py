"""Write files and folders under a temporary name and rename them into place.

An interrupted or failed write then never leaves a truncated file under the
final name, and never destroys a good file that was already there. The data is
flushed to disk before the rename, so this holds after a power cut too.

Every temporary file or folder in the making is registered here, so that a
signal (``interrupts``) can remove them all before the process exits.
The ``check_*`` functions tell, before any work starts, whether an output
can be written at all.
"""

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from .errors import InputError, not_regular


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file
_NEW_FOLDER_MODE = 0o777 & ~_umask()  # what mkdir() would give a new folder

# Temporary files and folders being written, and the lock that a signal's clean-up takes (and keeps
# until the process exits): a rename into place and a clean-up never interleave.
_temporaries: set[Path] = set()
_lock = threading.RLock()


def _register(path: Path) -> None:
    with _lock:
        _temporaries.add(path)


def _forget(path: Path) -> None:
    with _lock:
        _temporaries.discard(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def remove_temporaries() -> list[Path]:
    """Remove every temporary file and folder still in the making (a signal's clean-up); the removed ones.

    Takes the lock and keeps it: the caller is about to end the process, and no write may
    rename a temporary into place, or start a new one, after this.
    """
    _lock.acquire()
    removed = []
    for path in list(_temporaries):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    _temporaries.clear()
    return removed


# --------------------------------------------------------------------------- checks before any work

def _check_parents(final: Path) -> None:
    """Every existing folder above ``final`` is a folder, and the nearest one lets us create entries."""
    for folder in (final.parent, *final.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(folder, f"is a file, not a folder, so {final} cannot be written")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(folder, f"is not writable, so {final} cannot be written")
            return


def check_file_target(final) -> None:
    """Refuse, before any work, an output file that could not be written: ``InputError``."""
    final = Path(final)
    if final.is_dir():
        raise InputError(final, "is a folder; name a file to write")
    _refuse_special(final)
    _check_parents(final)


def _refuse_special(final: Path) -> None:
    # The rename would put a regular file in place of a device, FIFO or socket (or of the link to one,
    # as /dev/stdout is): as root, /dev/null itself. Such a target is refused, not replaced.
    if final.exists() and not final.is_file() and not final.is_dir():
        raise InputError(final, f"{not_regular(final.stat().st_mode)}; name a regular file to write")


def check_folder_target(final) -> None:
    """Refuse, before any work, an output folder that could not be written (or is a file)."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise InputError(final, "is a file, not a folder; name a folder to write")
    if final.is_dir():
        if not os.access(final, os.W_OK | os.X_OK):
            raise InputError(final, "is not writable")
        return
    _check_parents(final)


def is_empty_folder(path) -> bool:
    return Path(path).is_dir() and not any(Path(path).iterdir())


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
    _refuse_special(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{''.join(final.suffixes)}",
                                   dir=final.parent)
        os.close(fd)
        tmp = Path(tmp)
        _temporaries.add(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        mode = stat.S_IMODE(final.stat().st_mode) if final.exists() else _NEW_FILE_MODE
        os.chmod(tmp, mode)
        with _lock:
            os.replace(tmp, final)
            _temporaries.discard(tmp)
        _fsync_directory(final.parent)
    finally:
        _forget(tmp)


class FolderExists(InputError):
    """The target of ``atomic_folder`` holds files and ``overwrite`` was not given."""


RUN_FILES = ("model.keras", "history.csv", "metrics.json")  # what makes a folder a run folder


def refuse_existing_run(final, overwrite: bool) -> None:
    """Refuse a non-empty ``final`` unless ``overwrite``, and even then unless it is a run folder.

    ``--overwrite`` deletes the old folder whole: it must not take a home folder or a
    project's sources with it because of a typing slip in ``--out``.
    """
    final = Path(final)
    if not final.is_dir() or is_empty_folder(final):
        return
    if not overwrite:
        raise FolderExists(final, "is not empty (an earlier run?); add --overwrite to replace it whole, "
                                  "or choose another --out")
    if not any((final / name).is_file() for name in RUN_FILES):
        raise FolderExists(final, f"is not a run folder (it has none of {', '.join(RUN_FILES)}), so --overwrite "
                                  "will not delete it; choose another --out")


@contextlib.contextmanager
def atomic_folder(final, overwrite: bool = False):
    """Yield a temporary folder beside ``final``; on success it becomes ``final``, whole.

    An existing empty ``final`` is replaced; a non-empty one only with ``overwrite``,
    and then whole: nothing of the old folder is left beside the new files. A failure
    (or a signal) before the rename leaves ``final`` as it was and no temporary behind.
    """
    final = Path(final)
    check_folder_target(final)
    refuse_existing_run(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        _temporaries.add(tmp)
    old = None
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as written:
                    os.fsync(written.fileno())
        mode = stat.S_IMODE(final.stat().st_mode) if final.is_dir() else _NEW_FOLDER_MODE
        os.chmod(tmp, mode)
        with _lock:
            if final.is_dir() and not is_empty_folder(final):
                if not overwrite:  # it appeared while this run was being made: keep both
                    kept = Path(tempfile.mkdtemp(prefix=f"{final.name}.new-", dir=final.parent))
                    os.replace(tmp, kept)
                    _temporaries.discard(tmp)
                    raise FolderExists(final, f"was filled by something else meanwhile; this run was kept "
                                              f"in {kept}")
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
                _temporaries.add(old)
                os.replace(final, old / final.name)  # the old run: removed below, or by a signal's clean-up
            os.replace(tmp, final)  # replaces an empty folder (POSIX), or takes the free name
            _temporaries.discard(tmp)
        _fsync_directory(final.parent)
    finally:
        _forget(tmp)
        if old is not None:
            _forget(old)


@contextlib.contextmanager
def temporary_folder():
    """A fresh temporary folder (as ``tempfile.TemporaryDirectory``), also removed by a signal's clean-up."""
    with _lock:
        folder = Path(tempfile.mkdtemp())
        _temporaries.add(folder)
    try:
        yield str(folder)
    finally:
        _forget(folder)


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
