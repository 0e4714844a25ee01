"""Inference paths side by side: Keras's predict loop, the project's ForwardPass, the raw reference.

    python -m benchmarks.inference_paths [--backends tensorflow,jax] [--batch-sizes 32,128,500]
                                         [--windows 5] [--window-seconds 1.0] [--data DIR] [--out DIR]

Each backend runs in one fresh worker process. Per batch size, the windows of
every path alternate round by round (``bench.timing.measure``), so a machine
shared with other work slows them alike and the paired ratios hold; each ratio
is the median over rounds of the per-round ratios, with its range over rounds.
The images are the 10,000 real MNIST test images, ``uint8`` on the host; the
model is ``build_model`` (the speed does not depend on the weights). Paths:

- ``predict``: ``model.predict(x)`` on the host float32 images (what ``mnist-mb bench``
  timed before: Keras's whole predict loop);
- ``predict_on_batch``: the old ``predict_digits``: each batch of ``uint8`` digits
  converted to float32, then ``model.predict_on_batch``;
- ``project``: ``predict.predict_digits``'s path: ``inference.ForwardPass`` over the
  ``uint8`` digits, each batch converted on the host;
- ``project-float``: the same over host float32 images (what ``mnist-mb bench`` now times);
- ``project-no-xla`` (TensorFlow): ForwardPass's function without XLA;
- ``raw-device``: the raw reference (``bench.raw_tf`` / ``bench.raw_jax``) on batches already
  in device memory, compiled with Keras's XLA choice (TensorFlow on a CPU: no XLA), as
  ``mnist-mb bench`` timed it before;
- ``raw-host``: the reference on host float32 batches, copied in each call, compiled as the
  project's path is (TensorFlow: XLA), as ``mnist-mb bench`` times it now: like for like with
  ``project-float``.

Every path returns host arrays, so its time covers the device's work. Prints and
writes (``results.json``, ``results.md``) images/s and the ratios; a backend
whose worker fails is an error entry, and the command exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mnist_multibackend.bench.report import exit_status, write_results
from mnist_multibackend.bench.workers import answer_json, failed, run_worker
from mnist_multibackend.runtime import BACKENDS, cpu_line, machine

# Ratios reported: (name, numerator path, denominator path).
RATIOS = (("project ÷ predict", "project", "predict"),
          ("project ÷ predict_on_batch", "project", "predict_on_batch"),
          ("project-float ÷ raw-host", "project-float", "raw-host"),
          ("project-float ÷ raw-device", "project-float", "raw-device"),
          ("predict ÷ raw-device", "predict", "raw-device"),
          ("project-no-xla ÷ raw-device", "project-no-xla", "raw-device"),
          ("project ÷ project-no-xla", "project", "project-no-xla"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference_paths", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--batch-sizes", default="32,128,500")
    parser.add_argument("--windows", type=int, default=5, help="timed rounds per batch size (default: 5)")
    parser.add_argument("--window-seconds", type=float, default=1.0)
    parser.add_argument("--data", help="as for mnist-mb train")
    parser.add_argument("--out", default="runs/inference-paths")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends, args.batch_sizes = args.backends.split(","), [int(b) for b in args.batch_sizes.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return answer_json(lambda: worker(args))
    results = {"command": "python -m benchmarks.inference_paths " + " ".join(argv if argv is not None else sys.argv[1:]),
               "load_average_before": os.getloadavg()[0], "windows": args.windows,
               "window_seconds": args.window_seconds, "backends": []}
    for backend in args.backends:
        worker_args = ["--worker", backend, "--batch-sizes", ",".join(map(str, args.batch_sizes)),
                       "--windows", args.windows, "--window-seconds", args.window_seconds]
        worker_args += ["--data", args.data] if args.data else []
        print(f"inference_paths: {backend}: a fresh worker process", file=sys.stderr, flush=True)
        results["backends"].append({"backend": backend, "rows": [], **run_worker(
            "benchmarks.inference_paths", worker_args, label=f"inference_paths: {backend}")})
    write_results(args.out, results, markdown(results))
    print(table(results))
    return 1 if failed(results["backends"]) else 0


def worker(args) -> dict:
    from mnist_multibackend.runtime import start

    runtime = start(args.worker, "cpu")
    from mnist_multibackend import data
    from mnist_multibackend.bench.core import batches, spec_from_keras
    from mnist_multibackend.bench.throughput import raw_reference
    from mnist_multibackend.bench.timing import measure, paired_ratio, timed
    from mnist_multibackend.inference import ForwardPass
    from mnist_multibackend.model import build_model, compile_model

    digits = data.load_dataset(args.data).x_test  # uint8 (10000, 28, 28)
    x = data.as_model_input(digits)  # the host float32 images that predict and the references take
    model = compile_model(build_model())
    spec = spec_from_keras(model)
    rows = []
    for batch_size in args.batch_sizes:
        steps = len(digits) // batch_size
        host_batches = batches(x, x[:, 0, 0, 0], batch_size, steps)
        forward = ForwardPass(model, batch_size)
        # As mnist-mb bench compiles each: before, with Keras's XLA choice for the model (TensorFlow on a
        # CPU: off); now, with the project's path's (TensorFlow: on, see inference.tensorflow_xla).
        raw_before = raw_reference(runtime.backend)(spec, jit_compile=bool(model.jit_compile))
        raw_now = (raw_before if forward.uses_xla == bool(model.jit_compile)
                   else raw_reference(runtime.backend)(spec, jit_compile=forward.uses_xla))
        device_batches = raw_before.to_device(host_batches)

        def old_predict_digits(n):
            for start in range(0, n * batch_size, batch_size):
                np.asarray(model.predict_on_batch(data.as_model_input(digits[start:start + batch_size])))

        paths = {
            "predict": lambda n: timed(lambda: model.predict(x[:n * batch_size], batch_size=batch_size, verbose=0)),
            "predict_on_batch": lambda n: timed(lambda: old_predict_digits(n)),
            "project": lambda n: timed(lambda: forward.predict(digits[:n * batch_size], prepare=data.as_model_input)),
            "project-float": lambda n: timed(lambda: forward.predict(x[:n * batch_size])),
        }
        if runtime.backend == "tensorflow":
            unfused = ForwardPass(model, batch_size, xla=False)
            paths["project-no-xla"] = lambda n: timed(lambda: unfused.predict(digits[:n * batch_size],
                                                                               prepare=data.as_model_input))
        paths["raw-device"] = lambda n: timed(lambda: raw_before.predict(device_batches[:n]))
        paths["raw-host"] = lambda n: timed(lambda: raw_now.predict(host_batches[:n]))
        # Same weights in, same probabilities out, before anything is timed.
        difference = float(np.max(np.abs(forward.predict(digits[:batch_size], prepare=data.as_model_input)
                                          - model.predict(x[:batch_size], batch_size=batch_size, verbose=0))))
        measured = measure(paths, batch_size=batch_size, max_steps=steps, window_seconds=args.window_seconds,
                           windows=args.windows)
        ratios = {}
        for name, a, b in RATIOS:
            if a in measured and b in measured:
                per_round = [p / q for p, q in zip(measured[a].window_images_per_second,
                                                    measured[b].window_images_per_second)]
                ratios[name] = {"median": paired_ratio(measured[a], measured[b]), "rounds": per_round}
        rows.append({"batch_size": batch_size, "max_abs_diff_project_vs_predict": difference, "ratios": ratios,
                     "paths": {name: {"images_per_second": m.images_per_second,
                                      "window_images_per_second": m.window_images_per_second,
                                      "compile_seconds": m.compile_seconds, "cpu_share": m.cpu_share,
                                      "load_average_1min": m.load_average_1min} for name, m in measured.items()}})
        print(f"inference_paths: {runtime.backend} batch {batch_size}: " + ", ".join(
            f"{name} {m.images_per_second:,.0f}" for name, m in measured.items()) + " images/s; " + ", ".join(
            f"{name} {r['median']:.3f}" for name, r in ratios.items()), file=sys.stderr, flush=True)
    return {"status": "ok", "backend": runtime.backend,
            "versions": {"keras": runtime.keras_version, runtime.backend: runtime.backend_version},
            "machine": machine(), "load_average_after": os.getloadavg()[0], "rows": rows}


def table(results: dict) -> str:
    lines = ["| backend | batch | path | images/s (median window) |", "|---|---|---|---|"]
    ratio_lines = ["| backend | batch | ratio | median of rounds | range over rounds |", "|---|---|---|---|---|"]
    for backend in results["backends"]:
        if backend["status"] == "error":
            lines.append(f"| {backend['backend']} | | failed{exit_status(backend)}: {backend['reason']} | |")
        for row in backend["rows"]:
            for name, path in row["paths"].items():
                lines.append(f"| {backend['backend']} | {row['batch_size']} | {name} | "
                             f"{path['images_per_second']:,.0f} |")
            for name, ratio in row["ratios"].items():
                ratio_lines.append(f"| {backend['backend']} | {row['batch_size']} | {name} | {ratio['median']:.3f} | "
                                   f"{min(ratio['rounds']):.3f}-{max(ratio['rounds']):.3f} |")
    return "\n".join(lines + [""] + ratio_lines)


def markdown(results: dict) -> str:
    host = next((b["machine"] for b in results["backends"] if b.get("machine")), None) or machine()
    loads = [path["load_average_1min"] for b in results["backends"] for row in b["rows"]
             for path in row["paths"].values()]
    load = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "not measured"
    return "\n".join([
        "# Inference paths: Keras's predict loop, the project's ForwardPass, the raw reference",
        "",
        f"Command: `{results['command']}`; {results['windows']} interleaved rounds of ~{results['window_seconds']} s "
        f"windows per path and batch size (the 10,000 MNIST test images), load average "
        f"{results['load_average_before']:.2f} before, {load} as each batch size began.",
        f"Machine: {cpu_line(host)}.",
        "",
        table(results),
        "",
        f"Largest difference, project against model.predict: "
        + ", ".join(f"{b['backend']} batch {row['batch_size']}: {row['max_abs_diff_project_vs_predict']:.1e}"
                    for b in results["backends"] for row in b["rows"]) + ".",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
