"""The backends side by side: their training and inference windows alternated in time, each in its own process.

A process can hold one Keras backend, so the throughput matrix measures each
backend in its own worker, one after the other; on a host whose speed moves by
a quarter between minutes, the ratio of two rows measured minutes apart says as
much about the host as about the backends. Here both backends' workers stay
alive at once, each with its model compiled, and the parent asks them in turn
for one window of the same steps (``timing.measure``'s rounds, across
processes): a slow spell of the host slows both, and the median of the
per-round ratios stays a fair answer to "which backend is faster here".

The paths are the project's own (``throughput.KerasPaths``): ``model.fit``
with the CPU forms for training, ``inference.ForwardPass`` for inference. The
worker idles on its stdin while the other runs. Run by ``mnist-mb bench``;
a worker alone::

    python -m mnist_multibackend.bench.side_by_side --backend jax --batch-sizes 128 --serve
"""

from __future__ import annotations

import argparse
import statistics
import sys

from mnist_multibackend.runtime import BACKENDS

from .workers import ServingWorker, WorkerFailed, serve_json

MODES = ("train", "infer")


def measure(backends: tuple[str, ...], batch_sizes: tuple[int, ...], windows: int, window_seconds: float,
            data: str | None) -> dict:
    """Per batch size and mode, each backend's images/s and the per-round ratios of the second to the first.

    Returns ``{"backends", "windows", "window_seconds", "rows"}``, or with ``status: "error"`` and the
    reason when a worker failed (the matrix has measured each backend already; this part is then missing).
    """
    from .timing import measure as alternate

    base, other = backends
    args = ["--batch-sizes", ",".join(map(str, batch_sizes)), *(["--data", data] if data else [])]
    result = {"backends": list(backends), "windows": windows, "window_seconds": window_seconds}
    workers = {}
    try:
        for backend in backends:
            workers[backend] = ServingWorker(__name__, ["--backend", backend, *args],
                                             label=f"bench: side by side, {backend}")
        rows = []
        for batch_size in batch_sizes:
            max_steps = min(w.ready["images"] for w in workers.values()) // batch_size
            for mode in MODES:
                runs = {backend: _window(worker, batch_size, mode) for backend, worker in workers.items()}
                measured = alternate(runs, batch_size, max_steps, window_seconds, windows)
                ratios = [b / a for a, b in zip(measured[base].window_images_per_second,
                                                measured[other].window_images_per_second)]
                rows.append({"batch_size": batch_size, "mode": mode,
                             "images_per_second": {b: m.images_per_second for b, m in measured.items()},
                             "window_images_per_second": {b: m.window_images_per_second for b, m in measured.items()},
                             "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)})
                _log(f"batch {batch_size} {mode}: {other} ÷ {base} {rows[-1]['ratio']:.2f} "
                     f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")
        return {**result, "status": "ok", "rows": rows}
    except WorkerFailed as failure:
        return {**result, "status": "error", "reason": failure.reason, "exit_code": failure.exit_code, "rows": []}
    finally:
        for worker in workers.values():
            worker.close()


def _window(worker: ServingWorker, batch_size: int, mode: str):
    def run(steps: int) -> float:
        return worker.ask({"batch_size": batch_size, "mode": mode, "steps": steps})["seconds"]
    return run


def markdown(side: dict) -> list[str]:
    """The report's section for ``measure``'s result."""
    base, other = side["backends"]
    lines = ["## The backends side by side", ""]
    if side["status"] != "ok":
        return lines + [f"Not measured: a worker failed ({side['reason']}).", ""]
    lines += [f"Both backends' workers alive at once, their windows alternated: {side['windows']} rounds of about "
              f"{side['window_seconds']} s each after a warm-up round, so that a slow spell of the host slows both. "
              f"{other} ÷ {base}: the median of the per-round ratios of images/s, with the lowest and highest "
              "round (above 1: "
              f"{other} is faster). The rows above come from processes that ran minutes apart.", "",
              f"| batch | mode | {base} images/s | {other} images/s | {other} ÷ {base} | rounds |",
              "|---|---|---|---|---|---|"]
    for r in side["rows"]:
        speed = r["images_per_second"]
        lines.append(f"| {r['batch_size']} | {r['mode']} | {speed[base]:,.0f} | {speed[other]:,.0f} | "
                     f"{r['ratio']:.2f} | {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |")
    return lines + [""]


# The worker's side.

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mnist_multibackend.bench.side_by_side",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--batch-sizes", default="128", help="comma-separated")
    parser.add_argument("--data", help="MNIST location, as for mnist-mb train")
    parser.add_argument("--serve", action="store_true", required=True,
                        help="answer questions on stdin, one JSON line each (the parent's protocol)")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = {}

    def setup() -> dict:
        from mnist_multibackend import data
        from mnist_multibackend.runtime import start

        from .throughput import MAX_IMAGES, KerasPaths

        runtime = start(args.backend, "cpu")
        _log(runtime.describe())
        dataset = data.load_dataset(args.data)
        images = min(len(dataset.x_train), MAX_IMAGES)
        x, y = data.as_model_input(dataset.x_train[:images]), data.one_hot(dataset.y_train[:images])
        # Built now, compiled by the parent's first window (its probe counts the compilation).
        paths.update({b: KerasPaths(runtime, x, y, b) for b in args.batch_sizes})
        return {"backend": args.backend, "images": images, "runtime": runtime.as_dict()}

    def answer(question: dict) -> dict:
        path = paths[question["batch_size"]]
        return {"seconds": (path.train if question["mode"] == "train" else path.infer)(int(question["steps"]))}

    return serve_json(setup, answer)


def _log(message: str) -> None:
    print(f"bench: side by side: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
