"""The project's training path against a plain Keras 3 training loop of the same model, side by side.

    python -m benchmarks.overhead [--backends tensorflow,jax] [--rounds 3] [--epochs 3] [--images 12800]
                                  [--paths project,best] [--out DIR]

Each backend runs in one fresh worker process, which alternates, round by
round, a plain loop (``model.fit`` on arrays, ``verbose=0``, the test set as
validation data) and the project's ``training.train`` (its data loading,
feeding, callbacks, progress bar and validation) on the same images. An epoch
is timed from one epoch end to the next, validation included, so everything
the loop does between steps counts; the first epoch (compilation) is left out.
The plain loop runs twice: as Keras's default (``shuffle=True``), and
without shuffling (``plain-unshuffled``: not a training recipe, since every
epoch sees one order, but a bound on what feeding costs).
Paths: ``project`` is ``mnist-mb train`` (the original recipe: ``EpochBatches``,
and on TensorFlow 32 steps per execution); ``best`` is ``--recipe best``
(the same, with augmented batches).

Prints and writes (``results.json``, ``results.md``) each path's images/s and
its ratio to the plain loop (the reference): the median over rounds of the
per-round ratios. A backend whose worker fails is an error entry, and the
command exits 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from mnist_multibackend.bench.report import exit_status, write_results
from mnist_multibackend.bench.workers import answer_json, failed, run_worker
from mnist_multibackend.runtime import BACKENDS, cpu_line, machine

PATHS = {"project": {}, "best": {"recipe": "best"}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--paths", default="project", help=f"comma-separated, of {','.join(PATHS)} (default: project)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is left out (default: 3)")
    parser.add_argument("--images", type=int, default=12800, help="training images per epoch (default: 12800)")
    parser.add_argument("--data", help="as for mnist-mb train")
    parser.add_argument("--out", default="runs/overhead")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends, args.paths = args.backends.split(","), args.paths.split(",")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return answer_json(lambda: worker(args))
    load_before = os.getloadavg()[0]
    results = {"command": "python -m benchmarks.overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
               "load_average_before": load_before, "rounds": args.rounds, "epochs": args.epochs,
               "images": args.images, "backends": []}
    for backend in args.backends:
        worker_args = ["--worker", backend, "--paths", ",".join(args.paths), "--rounds", args.rounds,
                       "--epochs", args.epochs, "--images", args.images]
        worker_args += ["--data", args.data] if args.data else []
        print(f"overhead: {backend}: a fresh worker process", file=sys.stderr, flush=True)
        results["backends"].append({"backend": backend, "rows": [],
                                    **run_worker("benchmarks.overhead", worker_args, label=f"overhead: {backend}")})
    write_results(args.out, results, markdown(results))
    print(table(results))
    return 1 if failed(results["backends"]) else 0


def worker(args) -> dict:
    from mnist_multibackend.runtime import start

    runtime = start(args.worker, "cpu")
    from mnist_multibackend import data
    from mnist_multibackend.model import build_model, compile_model
    from mnist_multibackend.callbacks import ElapsedClock
    from mnist_multibackend.recipes import TrainConfig
    from mnist_multibackend.training import train

    dataset = data.load_dataset(args.data)
    x, y = data.as_model_input(dataset.x_train[:args.images]), data.one_hot(dataset.y_train[:args.images])
    x_test, y_test = data.as_model_input(dataset.x_test), data.one_hot(dataset.y_test)

    def plain(shuffle=True) -> list[float]:
        model = compile_model(build_model())
        clock = ElapsedClock(time.perf_counter())
        model.fit(x, y, batch_size=128, epochs=args.epochs, validation_data=(x_test, y_test), verbose=0,
                  shuffle=shuffle, callbacks=[clock])
        return clock.seconds

    def project(**settings) -> list[float]:
        clock = ElapsedClock(time.perf_counter())
        with tempfile.TemporaryDirectory() as out:
            train(TrainConfig(epochs=args.epochs, limit=args.images, data=args.data, out=out, **settings), runtime,
                  callbacks=[clock])
        return clock.seconds

    contenders = {"plain": plain, "plain-unshuffled": lambda: plain(shuffle=False),
                  **{path: (lambda s=PATHS[path]: project(**s)) for path in args.paths}}
    speeds = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        for name, run in contenders.items():
            ends = run()
            steady = ends[-1] - ends[0]  # epochs 2..N, each with its validation pass
            speeds[name].append(args.images * (args.epochs - 1) / steady)
            print(f"overhead: {args.worker} round {round_ + 1} {name}: {speeds[name][-1]:,.0f} images/s",
                  file=sys.stderr, flush=True)
    rows = []
    for name in contenders:
        row = {"path": name, "images_per_second": statistics.median(speeds[name]),
               "rounds_images_per_second": speeds[name]}
        if name == "plain":  # the reference; its ratio to itself would be 1 by construction
            row["reference"] = True
        else:
            ratios = [a / b for a, b in zip(speeds[name], speeds["plain"])]
            row.update(ratio_to_plain=statistics.median(ratios), rounds_ratio_to_plain=ratios)
        rows.append(row)
    return {"status": "ok", "backend": runtime.backend,
            "versions": {"keras": runtime.keras_version, runtime.backend: runtime.backend_version},
            "machine": machine(), "load_average_after": os.getloadavg()[0], "rows": rows}


def table(results: dict) -> str:
    lines = ["| backend | path | images/s (median) | ÷ plain Keras (median of rounds) | rounds |",
             "|---|---|---|---|---|"]
    for backend in results["backends"]:
        if backend["status"] == "error":
            lines.append(f"| {backend['backend']} | failed{exit_status(backend)}: {backend['reason']} | | | |")
        for row in backend["rows"]:
            if row.get("reference"):
                lines.append(f"| {backend['backend']} | {row['path']} | {row['images_per_second']:,.0f} "
                             "| (the reference) | |")
                continue
            ratios = ", ".join(f"{r:.3f}" for r in row["rounds_ratio_to_plain"])
            lines.append(f"| {backend['backend']} | {row['path']} | {row['images_per_second']:,.0f} "
                         f"| {row['ratio_to_plain']:.3f} | {ratios} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    host = next((b["machine"] for b in results["backends"] if b.get("machine")), None) or machine()
    return "\n".join([
        "# The project's training path against plain Keras",
        "",
        f"Command: `{results['command']}`; {results['rounds']} rounds, {results['epochs']} epochs of "
        f"{results['images']:,} images each (the first epoch left out), load average "
        f"{results['load_average_before']:.2f} before.",
        f"Machine: {cpu_line(host)}.",
        "",
        table(results),
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
