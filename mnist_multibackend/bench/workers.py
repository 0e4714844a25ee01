"""The worker protocol: one measurement in a fresh process, its answer one JSON object on stdout.

A process can hold only one Keras backend, and threads or oneDNN are fixed when
TensorFlow starts, so every benchmark runs each measurement in a fresh worker
process, ``python -m MODULE ARGS``, one after another. Both sides are here:

- The worker wraps its work in ``answer_json``: it prints the result as one
  JSON line on stdout and nothing else. Bad input (``InputError``: no MNIST
  data, say) is one ``mnist-mb: error:`` line on stderr and exit status 2.
- The parent calls ``run_worker``, which returns the worker's answer (with a
  ``status``, ``"ok"`` unless the worker says otherwise).

The failure policy, the same for every benchmark: a worker that crashes, fails
or gives no answer becomes one error row, ``{"status": "error", "reason",
"exit_code"}``: the reason is the worker's ``mnist-mb: error:`` line, else the
last line of its stderr. The caller adds what the worker was measuring, goes
on with the next one, writes its results with the error row among them, and
exits non-zero. Only bad input is not a row: the same mistake would fail every
worker, so ``run_worker`` raises the worker's ``InputError`` and the command
stops with that one line and exit status 2, before it writes anything.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from mnist_multibackend import interrupts, native_logs
from mnist_multibackend.errors import InputError

ERROR_PREFIX = "mnist-mb: error: "
EXIT_BAD_INPUT = 2
STDERR_TAIL_LINES = 40  # what a quiet worker's failure shows of its stderr
_running: set = set()  # the live workers, stopped by a signal's clean-up (interrupts)


def _stop_workers() -> None:
    for worker in list(_running):
        try:
            worker.terminate()  # the worker removes its own temporaries (answer_json installs interrupts)
        except OSError:
            pass
    for worker in list(_running):
        try:
            worker.wait(timeout=1)
        except Exception:  # noqa: BLE001 - the parent ends now either way
            worker.kill()


interrupts.on_interrupt(_stop_workers)


def worker_env() -> dict:
    """The environment for a worker: this very code first on the path, TensorFlow's start-up chatter off."""
    env = dict(os.environ)
    # The workers must import this very code, even when another copy of the project is installed.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Each worker chooses its device itself (runtime.start); an inherited JAX_PLATFORMS=cpu would
    # hide a GPU from a gpu worker and make it report the GPU as missing.
    env.pop("JAX_PLATFORMS", None)
    return env


def answer_json(compute: Callable[[], dict]) -> int:
    """The worker's side: run ``compute`` and print its result as one JSON line on stdout; the exit status.

    While it runs, stdout is stderr: whatever a library prints (Keras's progress
    bar) must not corrupt the answer. Bad input is one ``ERROR_PREFIX`` line and
    exit status 2, which the parent passes on.
    """
    interrupts.install()
    answer, sys.stdout = sys.stdout, sys.stderr
    try:
        result = compute()
    except InputError as err:
        print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        sys.stdout = answer
    print(json.dumps(result), flush=True)
    return 0


def run_worker(module: str, args, *, label: str, echo: bool = True) -> dict:
    """The parent's side: ``python -m module args`` in a fresh process; its answer, or one error row.

    ``echo``: pass the worker's stderr (its progress) through as it comes;
    otherwise it is kept back, and its last lines are shown only if the worker
    fails. ``label`` starts the line that reports a failure (``"bench: jax on cpu"``).
    """
    command = [sys.executable, "-m", module, *map(str, args)]
    error_line, tail = None, collections.deque(maxlen=STDERR_TAIL_LINES)
    with tempfile.TemporaryFile("w+") as stdout:
        with subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, errors="replace",
                              env=worker_env()) as worker:
            _running.add(worker)
            for line in worker.stderr:
                if line.startswith(ERROR_PREFIX):  # kept for the one line the parent prints
                    error_line = line[len(ERROR_PREFIX):].strip()
                    continue
                if native_logs.active() and native_logs.is_noise(line):  # as the parent's own are dropped
                    continue
                tail.append(line)
                if echo:
                    sys.stderr.write(line)
        _running.discard(worker)
        stdout.seek(0)
        lines = stdout.read().strip().splitlines()
    if worker.returncode == EXIT_BAD_INPUT and error_line:
        subject, _, problem = error_line.partition(": ")
        raise InputError(subject, problem)
    answer = _parse_answer(lines) if worker.returncode == 0 else None
    if answer is not None:
        return {"status": "ok", **answer}
    last = next((line.strip() for line in reversed(tail) if line.strip()), None)
    reason = error_line or last or ("no JSON answer on stdout" if worker.returncode == 0 else "no output")
    if not echo:
        sys.stderr.writelines(tail)
    print(f"{label}: the worker failed (exit status {worker.returncode}): {reason}", file=sys.stderr, flush=True)
    return error_row(reason, worker.returncode)


class WorkerFailed(Exception):
    """A serving worker ended or answered nonsense; ``reason`` is its error line or the last line of its stderr."""

    def __init__(self, reason: str, exit_code: int | None):
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


class ServingWorker:
    """The parent's side of a worker that answers many questions: ``python -m module args --serve``, kept alive.

    Where one answer per process is not enough (``side_by_side`` alternates short windows of two backends,
    each compiled once in its own process), the worker prints one JSON line when it is ready, then reads
    one JSON question per line on stdin and prints one JSON answer per line (``serve_json``). Its stderr
    is relayed as ``run_worker`` relays it. Used as a context manager: leaving it closes the worker's
    stdin, which ends it, and stops it if it does not end.
    """

    def __init__(self, module: str, args, *, label: str):
        self.label = label
        self._error_line, self._tail = None, collections.deque(maxlen=STDERR_TAIL_LINES)
        self._worker = subprocess.Popen([sys.executable, "-m", module, *map(str, args), "--serve"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, errors="replace", env=worker_env())
        _running.add(self._worker)
        self._relay = threading.Thread(target=self._relay_stderr, daemon=True)
        self._relay.start()
        self.ready = self._read()

    def ask(self, question: dict) -> dict:
        try:
            self._worker.stdin.write(json.dumps(question) + "\n")
            self._worker.stdin.flush()
        except OSError:
            pass  # it has ended: _read says why
        return self._read()

    def close(self) -> None:
        try:
            self._worker.stdin.close()
            self._worker.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._worker.kill()
            self._worker.wait()
        _running.discard(self._worker)
        self._relay.join(timeout=2)
        self._worker.stdout.close()
        if not self._relay.is_alive():
            self._worker.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self) -> dict:
        answer = _parse_answer([self._worker.stdout.readline()])
        if answer is not None:
            return answer
        self.close()
        if self._worker.returncode == EXIT_BAD_INPUT and self._error_line:
            subject, _, problem = self._error_line.partition(": ")
            raise InputError(subject, problem)
        last = next((line.strip() for line in reversed(self._tail) if line.strip()), None)
        reason = self._error_line or last or "no JSON answer on stdout"
        print(f"{self.label}: the worker failed (exit status {self._worker.returncode}): {reason}",
              file=sys.stderr, flush=True)
        raise WorkerFailed(reason, self._worker.returncode)

    def _relay_stderr(self) -> None:
        for line in self._worker.stderr:
            if line.startswith(ERROR_PREFIX):
                self._error_line = line[len(ERROR_PREFIX):].strip()
            elif not (native_logs.active() and native_logs.is_noise(line)):
                self._tail.append(line)
                sys.stderr.write(line)


def serve_json(setup: Callable[[], dict], answer: Callable[[dict], dict]) -> int:
    """The serving worker's side: ``setup()``'s result as the first JSON line, then ``answer(question)`` for
    each JSON line read from stdin, until stdin ends; the exit status. Bad input is as for ``answer_json``."""
    interrupts.install()
    channel, sys.stdout = sys.stdout, sys.stderr  # library prints must not corrupt the answers
    try:
        ready = setup()
    except InputError as err:
        print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(ready), file=channel, flush=True)
    for line in sys.stdin:
        print(json.dumps(answer(json.loads(line))), file=channel, flush=True)
    return 0


def error_row(reason: str, exit_code: int | None) -> dict:
    """What a failed worker leaves in the results."""
    return {"status": "error", "reason": reason, "exit_code": exit_code}


def failed(rows) -> bool:
    """Whether any row of a benchmark's results is a failed worker's: the command then exits non-zero."""
    return any(row.get("status") == "error" for row in rows)


def _parse_answer(lines: list[str]) -> dict | None:
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return None
    return answer if isinstance(answer, dict) else None
