"""Time to accuracy: wall seconds from a fresh process until the test accuracy first reaches 99.25 %.

``mnist-mb time-to-accuracy`` calls ``run(TimeToAccuracyConfig(...))``. Each run
is a fresh worker process (``python -m benchmarks.time_to_accuracy --worker``)
that trains one recipe on one backend exactly as ``mnist-mb train --recipe R``
does, scoring the test set after every epoch. The clock starts when the worker's
Python starts, before Keras is imported, so start-up, data loading and
compilation count, as they do for someone who types the command. Runs go one
after another, never side by side.

Writes ``results.json`` and ``results.md`` (one row per backend and recipe:
runs, median/min/max seconds to the target, final test accuracy).
"""

import time

PROCESS_STARTED = time.perf_counter()  # first, before the imports below: they are part of the wait

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from mnist_multibackend.atomic import write_text  # noqa: E402
from mnist_multibackend.errors import InputError  # noqa: E402
from mnist_multibackend.recipes import RECIPES, TARGET_ACCURACY  # noqa: E402
from mnist_multibackend.runtime import BACKENDS, machine  # noqa: E402

from .workers import ERROR_PREFIX, answer_json, worker_env  # noqa: E402


@dataclasses.dataclass
class TimeToAccuracyConfig:
    out: str = "runs/time-to-accuracy"
    backends: tuple[str, ...] = BACKENDS
    recipes: tuple[str, ...] = ("fast",)
    runs: int = 3
    data: str | None = None
    epochs: int | None = None  # override the recipes' (a quick check); None: the recipes' own
    limit: int | None = None  # train on the first N images only (a quick check)

    def command(self) -> str:
        words = ["mnist-mb", "time-to-accuracy", "--backends", ",".join(self.backends), "--recipes",
                 ",".join(self.recipes), "--runs", str(self.runs), "--out", self.out]
        words += ["--epochs", str(self.epochs)] if self.epochs else []
        return " ".join(words + (["--limit", str(self.limit)] if self.limit else []))


def run(config: TimeToAccuracyConfig) -> dict:
    """Every (backend, recipe) ``config.runs`` times; write and return the results."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    runs = []
    for backend in config.backends:
        for recipe in config.recipes:
            for index in range(config.runs):
                _log(f"{backend}, recipe {recipe}: run {index + 1} of {config.runs}")
                runs.append(run_worker(backend, recipe, config))
    results = {
        "schema": 1,
        "command": config.command(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_before": load_before,
        "target": TARGET_ACCURACY,
        "machine": runs[0]["machine"] if runs else machine(),
        "summary": summarise(runs),
        "runs": runs,
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(out / "results.md", markdown(results))
    return results


def run_worker(backend: str, recipe: str, config: TimeToAccuracyConfig) -> dict:
    """One worker process; its JSON answer, with the process's whole wall time added."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "benchmarks.time_to_accuracy", "--worker", "--backend", backend,
                   "--recipe", recipe, "--run-dir", run_dir]
        command += (["--data", str(config.data)] if config.data else [])
        command += (["--epochs", str(config.epochs)] if config.epochs else [])
        command += (["--limit", str(config.limit)] if config.limit else [])
        launched = time.perf_counter()
        worker = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())
        process_seconds = time.perf_counter() - launched
    error = next((line for line in worker.stderr.splitlines() if line.startswith(ERROR_PREFIX)), None)
    if worker.returncode == 2 and error:  # bad input (e.g. no MNIST data): the worker's one line, once
        subject, _, problem = error[len(ERROR_PREFIX):].partition(": ")
        raise InputError(subject, problem)
    if worker.returncode != 0:
        sys.stderr.write(worker.stderr[-4000:])
        raise RuntimeError(f"the {backend} worker for recipe {recipe} exited with status {worker.returncode}")
    return {**json.loads(worker.stdout.strip().splitlines()[-1]), "process_seconds": round(process_seconds, 2)}


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (backend, recipe): medians and ranges over the runs."""
    rows = []
    for key in dict.fromkeys((r["backend"], r["recipe"]) for r in runs):
        group = [r for r in runs if (r["backend"], r["recipe"]) == key]
        reached = [r["seconds_to_target"] for r in group if r["seconds_to_target"] is not None]
        accuracies = [r["test_accuracy"] for r in group]
        rows.append({
            "backend": key[0], "recipe": key[1], "runs": len(group), "reached": len(reached),
            "epochs": group[0]["epochs"],
            "median_seconds_to_target": statistics.median(reached) if reached else None,
            "min_seconds_to_target": min(reached, default=None),
            "max_seconds_to_target": max(reached, default=None),
            "median_epoch_reached": statistics.median([r["epoch_reached"] for r in group if r["epoch_reached"]])
            if reached else None,
            "median_test_accuracy": statistics.median(accuracies),
            "min_test_accuracy": min(accuracies), "max_test_accuracy": max(accuracies),
            "median_process_seconds": statistics.median(r["process_seconds"] for r in group),
            "min_process_seconds": min(r["process_seconds"] for r in group),
            "max_process_seconds": max(r["process_seconds"] for r in group),
            "median_steady_images_per_second": statistics.median(r["steady_images_per_second"] for r in group
                                                                 if r["steady_images_per_second"]) if
            any(r["steady_images_per_second"] for r in group) else None,
            "load_average_1min": [r["load_average_1min"] for r in group],
        })
    return rows


TABLE_HEADER = ("| backend | recipe | epochs | runs | reached 99.25 % | seconds to 99.25 % (median, min–max) "
                "| epoch reached | final test accuracy (median, min–max) | whole command s (median, min–max) "
                "| training images/s |")


def table(summary: list[dict]) -> str:
    lines = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    for s in summary:
        seconds = (f"{s['median_seconds_to_target']:.0f} ({s['min_seconds_to_target']:.0f}–"
                   f"{s['max_seconds_to_target']:.0f})" if s["reached"] else "not reached")
        epoch = f"{s['median_epoch_reached']:g}" if s["reached"] else "–"
        speed = f"{s['median_steady_images_per_second']:,.0f}" if s["median_steady_images_per_second"] else "–"
        lines.append(f"| {s['backend']} | {s['recipe']} | {s['epochs']} | {s['runs']} | {s['reached']} of "
                     f"{s['runs']} | {seconds} | {epoch} | {s['median_test_accuracy']:.2%} "
                     f"({s['min_test_accuracy']:.2%}–{s['max_test_accuracy']:.2%}) "
                     f"| {s['median_process_seconds']:.0f} ({s['min_process_seconds']:.0f}–"
                     f"{s['max_process_seconds']:.0f}) | {speed} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    m = results["machine"]
    return "\n".join([
        "# Time to accuracy",
        "",
        f"Command: `{results['command']}` ({results['finished_at']}, {results['wall_seconds']:.0f} s; load average "
        f"{results['load_average_before']:.2f} before).",
        f"Machine: {m['cpu']}, {m['cores']} cores; {m['system']}.",
        "",
        "Seconds from the start of a fresh process (before Keras is imported) to the end of the first epoch "
        f"whose test accuracy reached {results['target']:.2%}; the test set is scored after every epoch. "
        "\"Whole command\": the process from launch to exit (training, the final evaluation and saving the "
        "run folder). Training images/s: epochs 2 onwards.",
        "",
        table(results["summary"]),
        "",
    ])


# --- the worker ------------------------------------------------------------------------------------------


def worker(args) -> dict:
    from mnist_multibackend.runtime import start

    runtime = start(args.backend, "cpu")
    from mnist_multibackend.training import ElapsedClock, TrainConfig, time_to_accuracy, train

    clock = ElapsedClock(PROCESS_STARTED)
    config = TrainConfig(recipe=args.recipe, epochs=args.epochs, limit=args.limit, data=args.data, out=args.run_dir)
    metrics = train(config, runtime, callbacks=[clock])
    history = _read_history(Path(args.run_dir) / "history.csv")
    reached = time_to_accuracy(history["val_accuracy"], clock.seconds)
    return {
        "backend": runtime.backend, "recipe": args.recipe, "epochs": config.epochs,
        "seconds_to_target": reached["seconds"], "epoch_reached": reached["epoch"],
        "test_accuracy": metrics["test_accuracy"],
        "epoch_test_accuracy": history["val_accuracy"],
        "epoch_end_seconds": [round(s, 2) for s in clock.seconds],
        "steady_images_per_second": metrics["steady_images_per_second"],
        "load_average_1min": os.getloadavg()[0],
        "versions": {"keras": runtime.keras_version, runtime.backend: runtime.backend_version},
        "machine": {k: v for k, v in metrics["machine"].items() if k != "load_average_1min"},
    }


def _read_history(path: Path) -> dict:
    import csv

    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in rows[0]}


def _log(message: str) -> None:
    print(f"time-to-accuracy: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.time_to_accuracy --worker")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--data")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    return answer_json(lambda: worker(args))


if __name__ == "__main__":
    sys.exit(main())
