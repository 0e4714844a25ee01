"""The one exception type the command line turns into exit status 2."""

from __future__ import annotations

import sys


class InputError(Exception):
    """Bad input from the user: a file, a flag or the environment.

    The message is one line that names the offending thing and what is wrong
    with it, fit to print as is.
    """

    def __init__(self, subject, problem: str):
        self.subject = str(subject)
        self.problem = problem
        super().__init__(f"{self.subject}: {problem}")


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message (its type name when it has none), cut to ``limit`` characters.

    Library exceptions can span many lines; an ``InputError`` quotes only this.
    """
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."


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
    print(f"{source}: {message}", file=sys.stderr)
