"""Time to accuracy: wall seconds from a fresh process until the test accuracy first reaches 99.25 %.

``mnist-mb time-to-accuracy`` calls ``run(TimeToAccuracyConfig(...))``. Each run
is a fresh worker process (``python -m mnist_multibackend.bench.time_to_accuracy --worker``)
that trains one recipe on one backend exactly as ``mnist-mb train --recipe R``
does, scoring the test set after every epoch. The clock starts when the worker's
Python starts, before Keras is imported, so start-up, data loading and
compilation count, as they do for someone who types the command. Runs go one
after another, never side by side, in rounds: each round runs every backend
and recipe once.

Writes ``results.json`` and ``results.md`` (one row per backend and recipe:
runs, median/min/max seconds to the target, final test accuracy). A run whose
worker failed is an error row among the runs (see ``workers``), counted as
failed in its backend and recipe's row.
"""

import time

PROCESS_STARTED = time.perf_counter()  # first, before the imports below: they are part of the wait

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from mnist_multibackend.atomic import temporary_folder  # noqa: E402
from mnist_multibackend.errors import InputError, require_at_least  # noqa: E402
from mnist_multibackend.recipes import PRECISIONS, RECIPES, TARGET_ACCURACY  # noqa: E402
from mnist_multibackend.runtime import BACKENDS, cpu_line, results_machine  # noqa: E402

from .report import exit_status, write_results  # noqa: E402
from .workers import answer_json, run_worker  # noqa: E402

WORKER = "mnist_multibackend.bench.time_to_accuracy"
MAX_RUNS = 100  # runs of each recipe on each backend: each is a whole training


@dataclasses.dataclass
class TimeToAccuracyConfig:
    out: str = "runs/time-to-accuracy"
    backends: tuple[str, ...] = BACKENDS
    recipes: tuple[str, ...] = ("fast",)
    runs: int = 3
    data: str | None = None
    epochs: int | None = None  # override the recipes' (a quick check); None: the recipes' own
    limit: int | None = None  # train on the first N images only (a quick check)
    precision: str = "float32"  # as mnist-mb train --precision: bfloat16 trains in Keras's mixed_bfloat16

    def __post_init__(self):
        for flag, value in (("--runs", self.runs), ("--epochs", self.epochs), ("--limit", self.limit)):
            if value is not None:
                require_at_least(flag, value)
        if self.runs > MAX_RUNS:  # the plan is a list of every run: 10**8 of them took 13 GB
            raise InputError("--runs", f"at most {MAX_RUNS} runs of each recipe on each backend. "
                                       f"Received: {self.runs:,}")

    def command(self) -> str:
        words = ["mnist-mb", "time-to-accuracy", "--backends", ",".join(self.backends), "--recipes",
                 ",".join(self.recipes), "--runs", str(self.runs), "--out", self.out]
        words += ["--epochs", str(self.epochs)] if self.epochs else []
        words += ["--limit", str(self.limit)] if self.limit else []
        return " ".join(words + (["--precision", self.precision] if self.precision != "float32" else []))


def run(config: TimeToAccuracyConfig) -> dict:
    """Every (backend, recipe) ``config.runs`` times; write and return the results."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    runs = []
    for index, backend, recipe in schedule(config):
        _log(f"{backend}, recipe {recipe}: run {index + 1} of {config.runs}")
        runs.append(time_worker(backend, recipe, config))
    hosts = [r["machine"] for r in runs if r["status"] == "ok"]
    results = {
        "schema": 1,
        "command": config.command(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_before": load_before,
        "target": TARGET_ACCURACY,
        "precision": config.precision,
        "machine": results_machine(hosts),
        "summary": summarise(runs),
        "runs": runs,
    }
    write_results(config.out, results, markdown(results))
    return results


def schedule(config: TimeToAccuracyConfig) -> list[tuple[int, str, str]]:
    """The runs in order, ``(index, backend, recipe)``: round by round, every backend and recipe in each, so
    that a slow spell of the host touches them alike (all of one backend's runs first would hand it to one)."""
    return [(index, backend, recipe) for index in range(config.runs) for backend in config.backends
            for recipe in config.recipes]


def time_worker(backend: str, recipe: str, config: TimeToAccuracyConfig) -> dict:
    """One worker process: its answer with the process's whole wall time added, or an error row."""
    with temporary_folder() as run_dir:  # removed by a signal's clean-up too
        args = ["--worker", "--backend", backend, "--recipe", recipe, "--run-dir", run_dir]
        args += ["--data", config.data] if config.data else []
        args += ["--epochs", config.epochs] if config.epochs else []
        args += ["--limit", config.limit] if config.limit else []
        args += ["--precision", config.precision]
        launched = time.perf_counter()
        answer = run_worker(WORKER, args, label=f"time-to-accuracy: {backend}, recipe {recipe}", echo=False)
        process_seconds = time.perf_counter() - launched
    if answer["status"] == "error":
        return {"backend": backend, "recipe": recipe, **answer}
    return {**answer, "process_seconds": round(process_seconds, 2)}


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (backend, recipe): medians and ranges over the runs that finished, and how many failed."""
    rows = []
    for key in dict.fromkeys((r["backend"], r["recipe"]) for r in runs):
        everyone = [r for r in runs if (r["backend"], r["recipe"]) == key]
        group = [r for r in everyone if r.get("status", "ok") == "ok"]
        failed = len(everyone) - len(group)
        if not group:
            rows.append({"backend": key[0], "recipe": key[1], "runs": 0, "failed": failed, "reached": 0,
                         "epochs": None})
            continue
        reached = [r["seconds_to_target"] for r in group if r["seconds_to_target"] is not None]
        accuracies = [r["test_accuracy"] for r in group]
        rows.append({
            "backend": key[0], "recipe": key[1], "runs": len(group), "failed": failed, "reached": len(reached),
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
        runs = f"{s['runs']}" + (f" ({s['failed']} failed)" if s.get("failed") else "")
        if not s["runs"]:
            lines.append(f"| {s['backend']} | {s['recipe']} | – | {runs} |" + " – |" * 6)
            continue
        seconds = (f"{s['median_seconds_to_target']:.0f} ({s['min_seconds_to_target']:.0f}–"
                   f"{s['max_seconds_to_target']:.0f})" if s["reached"] else "not reached")
        epoch = f"{s['median_epoch_reached']:g}" if s["reached"] else "–"
        speed = f"{s['median_steady_images_per_second']:,.0f}" if s["median_steady_images_per_second"] else "–"
        lines.append(f"| {s['backend']} | {s['recipe']} | {s['epochs']} | {runs} | {s['reached']} of "
                     f"{s['runs']} | {seconds} | {epoch} | {s['median_test_accuracy']:.2%} "
                     f"({s['min_test_accuracy']:.2%}–{s['max_test_accuracy']:.2%}) "
                     f"| {s['median_process_seconds']:.0f} ({s['min_process_seconds']:.0f}–"
                     f"{s['max_process_seconds']:.0f}) | {speed} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    m = results["machine"]
    failures = [f"- {r['backend']}, recipe {r['recipe']}: failed{exit_status(r)}: {r['reason']}"
                for r in results["runs"] if r["status"] == "error"]
    return "\n".join([
        "# Time to accuracy",
        "",
        f"Command: `{results['command']}` ({results['finished_at']}, {results['wall_seconds']:.0f} s; load average "
        f"{results['load_average_before']:.2f} before).",
        f"Machine: {cpu_line(m)}; {m['system']}.",
        "",
        "Seconds from the start of a fresh process (before Keras is imported) to the end of the first epoch "
        f"whose test accuracy reached {results['target']:.2%}; the test set is scored after every epoch. "
        "\"Whole command\": the process from launch to exit (training, the final evaluation and saving the "
        "run folder). Training images/s: epochs 2 onwards." + _precision_note(results.get("precision", "float32")),
        "",
        table(results["summary"]),
        "",
        *failures,
        *([""] if failures else []),
    ])


def _precision_note(precision: str) -> str:
    if precision == "float32":
        return ""
    return (f" Trained in {precision} (Keras's mixed_{precision} policy): the epochs' test accuracy is the "
            f"{precision} model's, the final test accuracy that of the float32 copy saved.")


# --- the worker ------------------------------------------------------------------------------------------


def worker(args) -> dict:
    from mnist_multibackend.runtime import start

    runtime = start(args.backend, "cpu")
    from mnist_multibackend.callbacks import ElapsedClock
    from mnist_multibackend.recipes import TrainConfig
    from mnist_multibackend.training import time_to_accuracy, train

    clock = ElapsedClock(PROCESS_STARTED)
    config = TrainConfig(recipe=args.recipe, epochs=args.epochs, limit=args.limit, data=args.data, out=args.run_dir,
                         precision=args.precision)
    metrics = train(config, runtime, callbacks=[clock])
    history = _read_history(Path(args.run_dir) / "history.csv")
    reached = time_to_accuracy(history["val_accuracy"], clock.seconds)
    return {
        "status": "ok", "backend": runtime.backend, "recipe": args.recipe, "epochs": config.epochs,
        "seconds_to_target": reached["seconds"], "epoch_reached": reached["epoch"],
        "test_accuracy": metrics["test_accuracy"], "precision": config.precision,
        **({"mixed_precision_test_accuracy": metrics["mixed_precision_test_accuracy"]}
           if "mixed_precision_test_accuracy" in metrics else {}),
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
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER} --worker")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--data")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    args = parser.parse_args(argv)
    return answer_json(lambda: worker(args))


if __name__ == "__main__":
    sys.exit(main())
