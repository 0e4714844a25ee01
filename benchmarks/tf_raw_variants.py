"""TensorFlow on the CPU: the raw training step in other layouts and batch-norm forms, and where oneDNN spends it.

    python -m benchmarks.tf_raw_variants [--variants nhwc,nhwc-fused,nchw,nchw-fused] [--steps 100] [--windows 3]
                                         [--batch-size 128] [--profile] [--out DIR]

Each variant trains ``bench.raw_tf``'s reference of the model (``tf.nn`` ops,
Adam, one ``tf.function``, no Keras) with its forward pass rewritten, on random
images, in a fresh process with the project's TensorFlow settings (``runtime.start``):

- ``nhwc``: channels last, batch norm as Keras computes it (``tf.nn.moments``
  then ``tf.nn.batch_normalization``); the form the Keras model runs;
- ``nhwc-fused``: the same with ``FusedBatchNormV3`` (``tf.compat.v1.nn.fused_batch_norm``),
  which oneDNN runs as one kernel forward and one backward;
- ``nchw``, ``nchw-fused``: channels first, the input transposed once.

The figure is the median of ``--windows`` windows of ``--steps`` steps, after a
warm-up. ``--profile`` instead runs ``--steps`` steps of each variant with
``ONEDNN_VERBOSE=1`` and sums oneDNN's own execution times per primitive,
pass and shape: how much of the step each convolution's forward pass, input
gradient and weight gradient take (the times include the verbose mode's own
cost, and primitives that run concurrently overlap, so the rows may add up to
more than the step).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

from mnist_multibackend.bench.report import write_results
from mnist_multibackend.runtime import cpu_line

VARIANTS = {"nhwc": ("NHWC", False), "nhwc-fused": ("NHWC", True), "nchw": ("NCHW", False),
            "nchw-fused": ("NCHW", True)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tf_raw_variants", description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="oneDNN's verbose mode: time per primitive")
    parser.add_argument("--out", default="runs/tf-raw-variants")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    return args


def worker(args) -> dict:
    from mnist_multibackend.runtime import machine, start

    start("tensorflow", "cpu")
    import numpy as np
    import tensorflow as tf

    from mnist_multibackend.bench.core import CONVS, DENSES, NORMS, POOL_AFTER, spec_from_keras
    from mnist_multibackend.bench.raw_tf import RawTensorFlow
    from mnist_multibackend.model import build_model, compile_model

    layout, fused = VARIANTS[args.worker]

    class Variant(RawTensorFlow):
        """``bench.raw_tf``'s reference (its weights, dropout and Adam step), with the convolutions' layout and
        batch-norm form of this variant."""

        def _forward(self, x, training: bool):
            p, s = self.params, self.spec
            axes, shape = ([0, 1, 2], [-1]) if layout == "NHWC" else ([0, 2, 3], [1, -1, 1, 1])
            if layout == "NCHW":
                x = tf.transpose(x, [0, 3, 1, 2])
            for conv, norm in zip(CONVS, NORMS):
                x = tf.nn.bias_add(tf.nn.conv2d(x, p[f"{conv}/kernel"], 1, "VALID", data_format=layout),
                                   p[f"{conv}/bias"], data_format=layout)
                if fused:
                    x, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                        x, p[f"{norm}/gamma"], p[f"{norm}/beta"], epsilon=s.bn_epsilon, data_format=layout,
                        is_training=True)
                else:
                    mean, variance = tf.nn.moments(x, axes=axes)
                    x = tf.nn.batch_normalization(x, tf.reshape(mean, shape), tf.reshape(variance, shape),
                                                  tf.reshape(p[f"{norm}/beta"], shape),
                                                  tf.reshape(p[f"{norm}/gamma"], shape), s.bn_epsilon)
                for statistic, value in (("moving_mean", mean), ("moving_variance", variance)):
                    moving = self.moving[f"{norm}/{statistic}"]
                    moving.assign(moving * s.bn_momentum + value * (1 - s.bn_momentum))
                x = tf.nn.relu(x)
                if conv in POOL_AFTER:
                    x = tf.nn.max_pool2d(x, 2, 2, "VALID", data_format=layout)
            if layout == "NCHW":
                x = tf.transpose(x, [0, 2, 3, 1])  # flatten in the model's order
            x = self._dropout(x, s.dropout_rates[0], 1, training)
            x = tf.nn.relu(tf.reshape(x, [tf.shape(x)[0], -1]) @ p[f"{DENSES[0]}/kernel"] + p[f"{DENSES[0]}/bias"])
            x = self._dropout(x, s.dropout_rates[1], 2, training)
            return x @ p[f"{DENSES[1]}/kernel"] + p[f"{DENSES[1]}/bias"]

    reference = Variant(spec_from_keras(compile_model(build_model())))
    rng = np.random.default_rng(0)
    batch = args.batch_size
    batches = reference.to_device([(rng.random((batch, 28, 28, 1), "float32"),
                                    np.eye(10, dtype="float32")[rng.integers(0, 10, batch)]) for _ in range(16)])

    def run(steps: int) -> float:
        start_time = time.perf_counter()
        reference.train(batches[s % len(batches)] for s in range(steps))  # returns once the last step is done
        return steps * batch / (time.perf_counter() - start_time)

    run(5)  # tracing, and oneDNN's first-call set-up
    windows = [run(args.steps)] if args.profile else [run(args.steps) for _ in range(args.windows)]
    return {"variant": args.worker, "images_per_second": statistics.median(windows),
            "windows_images_per_second": windows, "machine": machine()}


def _run(variant: str, args, profile: bool) -> tuple[dict, str]:
    # Not bench.workers.run_worker: the parent needs the worker's whole stdout, where oneDNN's verbose mode writes.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if profile:
        env["ONEDNN_VERBOSE"] = "1"
    command = [sys.executable, "-m", "benchmarks.tf_raw_variants", "--worker", variant, "--steps", str(args.steps),
               "--windows", str(args.windows), "--batch-size", str(args.batch_size)] + (["--profile"] if profile else [])
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"tf_raw_variants: {variant} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def onednn_times(verbose: str, steps: int) -> list[dict]:
    """Rows of ``ONEDNN_VERBOSE=1`` output summed per primitive, pass and shape, in ms per step, largest first."""
    total = collections.Counter()
    for line in verbose.splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose,") or len(fields) < 9 or fields[3] != "exec":
            continue
        # onednn_verbose,v1,primitive,exec,cpu,<primitive>,<implementation>,<pass>,...,<problem>,<ms>
        total[(fields[5], fields[6], fields[7], fields[-2])] += float(fields[-1])
    # the warm-up's 5 steps ran with verbose on too: all steps count
    return [{"primitive": k[0], "implementation": k[1], "pass": k[2], "problem": k[3], "ms_per_step": v / (steps + 5)}
            for k, v in total.most_common()]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results = {"command": "python -m benchmarks.tf_raw_variants " + " ".join(argv if argv is not None else sys.argv[1:]),
               "load_average_before": os.getloadavg()[0], "rows": []}
    for variant in args.variants:
        row, stdout = _run(variant, args, args.profile)
        if args.profile:
            row["onednn"] = onednn_times(stdout, args.steps)
        results["rows"].append(row)
        print(f"tf-raw-variants: {variant}: {row['images_per_second']:,.0f} images/s", file=sys.stderr, flush=True)
    write_results(args.out, results, markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = ["# TensorFlow raw training step: layouts and batch-norm forms", "",
             f"Command: `{results['command']}`; load average {results['load_average_before']:.2f} before.",
             f"Machine: {cpu_line(results['rows'][0]['machine'])}." if results["rows"] else "", "",
             "| variant | images/s (median) | windows |", "|---|---|---|"]
    for row in results["rows"]:
        windows = ", ".join(f"{w:,.0f}" for w in row["windows_images_per_second"])
        lines.append(f"| {row['variant']} | {row['images_per_second']:,.0f} | {windows} |")
    for row in results["rows"]:
        if "onednn" in row:
            lines += ["", f"## oneDNN primitives, {row['variant']} (ms per step, verbose mode)", "",
                      "| ms/step | primitive | pass | implementation | problem |", "|---|---|---|---|---|"]
            lines += [f"| {r['ms_per_step']:.2f} | {r['primitive']} | {r['pass']} | {r['implementation']} | "
                      f"{r['problem']} |" for r in row["onednn"][:15]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
