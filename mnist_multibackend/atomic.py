"""Write files under a temporary name and rename them into place.

An interrupted or failed write then never leaves a truncated file under the
final name, and never destroys a good file that was already there.
"""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final):
    """Yield a temporary path beside ``final``; on success rename it to ``final``.

    The temporary name keeps the final suffix because some writers (Keras's
    ``model.save``, h5py) decide the format from it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{''.join(final.suffixes)}",
                               dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(final, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final, text: str) -> None:
    write_bytes(final, text.encode("utf-8"))
