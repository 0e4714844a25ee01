"""Keep the backends' C++ start-up lines off a user's terminal.

TensorFlow writes "Could not find cuda drivers on your machine", absl's "All
log messages before absl::InitializeLog()" and its oneDNN notice straight to
file descriptor 2 from C++, when it is imported, whatever
``TF_CPP_MIN_LOG_LEVEL`` says (TensorFlow 2.21); Keras imports TensorFlow even
on the JAX backend, the first time it saves a model. So a CPU user's first
sight was a warning, and a one-line error was not one line.

``filtered()`` sends descriptor 2 through a pipe whose reader drops those
lines and passes every other line on as it comes, while Python's own
``sys.stderr`` (our messages, warnings, tracebacks) writes to the terminal
directly. The command line uses it unless ``--verbose`` is given or the user
set ``TF_CPP_MIN_LOG_LEVEL`` themselves.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# glog-style lines ("I0000 00:00:1796122491.760175 3541 cudart_stub.cc:31] ...") of level INFO or WARNING, absl's
# pre-initialisation notice, and the errors a CPU-only machine gets from probing for CUDA.
NOISE = re.compile(
    rb"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] (?:failed call to cuInit|Unable to register cu))")
_FLUSH_SECONDS = 2.0  # how long the exit waits for the last lines of a child that still holds the pipe


_active = False  # whether filtered() is in force in this process


def is_noise(line: str | bytes) -> bool:
    """Whether ``line`` is one of the known start-up lines."""
    return bool(NOISE.match(line.encode(errors="replace") if isinstance(line, str) else line))


def active() -> bool:
    """Whether this process filters now: then its child processes' stderr, relayed line by line, should be too."""
    return _active


def user_left_log_level() -> bool:
    """True unless the user chose TensorFlow's log level: then they see what it lets through."""
    return "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def _pump(read_fd: int, out_fd: int) -> None:
    with open(read_fd, "rb", buffering=0) as pipe:
        for line in iter(pipe.readline, b""):
            if not is_noise(line):
                os.write(out_fd, line)


@contextlib.contextmanager
def filtered():
    """Within the block, drop the known native start-up lines from descriptor 2; pass everything else.

    Does nothing when ``sys.stderr`` is not the process's own (a test runner
    capturing it, say), so that it never takes output from whoever captures it.
    """
    global _active
    if sys.stderr is not sys.__stderr__ or sys.stderr is None:
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    python_stderr = sys.stderr
    sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding,
                      errors="backslashreplace")
    pump = threading.Thread(target=_pump, args=(read_fd, terminal), name="native-stderr", daemon=True)
    pump.start()
    _active = True
    try:
        yield
    finally:
        _active = False
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes this process's write end: the pump ends at the pipe's end
        pump.join(_FLUSH_SECONDS)
        ours, sys.stderr = sys.stderr, python_stderr
        ours.close()
        if not pump.is_alive():  # else a child still writes through it; the process exits soon anyway
            os.close(terminal)
