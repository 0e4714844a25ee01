"""SIGINT and SIGTERM: stop at once, remove what was half-written, say so in one line.

Python runs a signal handler only in the main thread, between two bytecodes: while
TensorFlow or JAX run a compiled step (32 of them per call on TensorFlow), a Ctrl-C
waited, and the exit then waited for the backends' threads; SIGTERM's default action
killed the process outright and left its temporary files behind. So the handlers
here do nothing themselves: the signal's number also reaches a pipe
(``signal.set_wakeup_fd``) that a thread of ours waits on; that thread removes every
temporary file and folder in the making (``atomic.remove_temporaries``), stops any
worker processes, prints one line (with the command that resumes, when there is
one) and ends the process: exit status 128 + the signal's number (130 for SIGINT,
143 for SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from . import atomic

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_cleanups: list[Callable[[], None]] = []
_hint: Callable[[], str | None] | None = None
_installed = False


def on_interrupt(cleanup: Callable[[], None]) -> None:
    """Also run ``cleanup`` (quick, never raising) when a signal ends the process."""
    _cleanups.append(cleanup)


def set_hint(hint: Callable[[], str | None] | None) -> None:
    """What the one line adds after "interrupted by SIG...": e.g. the command that resumes."""
    global _hint
    _hint = hint


def install() -> bool:
    """Handle SIGINT and SIGTERM as above; False (nothing done) outside the main thread."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in SIGNALS:
        signal.signal(signum, _ignore_in_main_thread)
    threading.Thread(target=_watch, args=(read_fd,), name="signals", daemon=True).start()
    _installed = True
    return True


def _ignore_in_main_thread(signum, frame) -> None:
    """The watcher thread acts; the main thread carries on until the process ends."""


def _watch(read_fd: int) -> None:
    while True:
        received = os.read(read_fd, 64)
        wanted = [n for n in received if n in SIGNALS]
        if wanted:
            _finish(wanted[0])


def _finish(signum: int) -> None:
    for cleanup in _cleanups:
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - the process ends now whatever happens
            pass
    atomic.remove_temporaries()  # keeps its lock: nothing is renamed into place after this
    try:
        extra = _hint() if _hint else None
    except Exception:  # noqa: BLE001
        extra = None
    line = f"mnist-mb: interrupted by {signal.Signals(signum).name}; stopped, temporary files removed"
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    try:
        sys.stderr.write(f"\n{line}{'; ' + extra if extra else ''}\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)
