"""The one exception type the command line turns into exit status 2."""

from __future__ import annotations

import re
import stat
import sys

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\t``, ``\\x1b``): a file may be named
    ``a\\nb.png``, and a line that names it must stay one line, or one field of a tab-separated one."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


class InputError(Exception):
    """Bad input from the user: a file, a flag or the environment.

    The message is one line that names the offending thing and what is wrong
    with it, fit to print as is (control characters in either are escaped).
    """

    def __init__(self, subject, problem: str):
        self.subject = one_line(str(subject))
        self.problem = one_line(problem)
        super().__init__(f"{self.subject}: {self.problem}")


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message (its type name when it has none), cut to ``limit`` characters.

    Library exceptions can span many lines; an ``InputError`` quotes only this.
    """
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def not_regular(mode: int) -> str:
    """Why a file of ``st_mode`` ``mode`` is refused where a regular file is read or written: its kind."""
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {kind}, expected a regular file"


def require_at_least(subject, value, minimum: int = 1):
    """``value`` when it is a whole number of at least ``minimum``; else an ``InputError`` naming ``subject``.

    The one form of the commonest check on counts (epochs, batch sizes, devices, processes).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(subject, f"must be a whole number. Received: {value!r}")
    if value < minimum:
        raise InputError(subject, f"must be at least {minimum}. Received: {value}")
    return value


def notice(source, message: str) -> None:
    """One line on stderr about ``source`` that the user should know but that stops nothing (what was left out)."""
    print(one_line(f"{source}: {message}"), file=sys.stderr)
