"""TensorFlow on the CPU: the raw training step in other layouts and batch-norm forms, and where oneDNN spends it.

    python -m benchmarks.tf_raw_variants [--variants nhwc,nhwc-fused,nchw,nchw-fused] [--steps 100] [--windows 3]
                                         [--batch-size 128] [--profile] [--out DIR]

Each variant trains the model's network, written in ``tf.nn`` ops under one
``tf.function`` as ``bench.raw_tf`` does (no Keras), on random images, in a
fresh process with the project's TensorFlow settings (``runtime.start``):

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
CHANNELS = ((1, 32), (32, 32), (32, 64), (64, 64))  # conv0..conv3, 3x3, VALID; pools after conv1 and conv3


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

    layout, fused = VARIANTS[args.worker]
    rng = np.random.default_rng(0)
    params = {}
    for i, (c_in, c_out) in enumerate(CHANNELS):
        params.update({f"kernel{i}": rng.normal(0, 0.1, (3, 3, c_in, c_out)), f"bias{i}": np.zeros(c_out),
                       f"gamma{i}": np.ones(c_out), f"beta{i}": np.zeros(c_out)})
    params.update(fc1=rng.normal(0, 0.02, (1024, 256)), fc1_bias=np.zeros(256),
                  fco=rng.normal(0, 0.02, (256, 10)), fco_bias=np.zeros(10))
    params = {k: tf.Variable(v.astype("float32")) for k, v in params.items()}
    moving = [(tf.Variable(tf.zeros(c)), tf.Variable(tf.ones(c))) for _, c in CHANNELS]
    slots = {k: (tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for k, v in params.items()}
    step_count = tf.Variable(0.0)

    def forward(x):
        if layout == "NCHW":
            x = tf.transpose(x, [0, 3, 1, 2])
        axes, shape = ([0, 1, 2], [-1]) if layout == "NHWC" else ([0, 2, 3], [1, -1, 1, 1])
        for i in range(len(CHANNELS)):
            x = tf.nn.bias_add(tf.nn.conv2d(x, params[f"kernel{i}"], 1, "VALID", data_format=layout),
                               params[f"bias{i}"], data_format=layout)
            if fused:
                x, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                    x, params[f"gamma{i}"], params[f"beta{i}"], epsilon=1e-3, data_format=layout, is_training=True)
            else:
                mean, variance = tf.nn.moments(x, axes=axes)
                x = tf.nn.batch_normalization(x, tf.reshape(mean, shape), tf.reshape(variance, shape),
                                              tf.reshape(params[f"beta{i}"], shape),
                                              tf.reshape(params[f"gamma{i}"], shape), 1e-3)
            moving[i][0].assign(moving[i][0] * 0.99 + mean * 0.01)
            moving[i][1].assign(moving[i][1] * 0.99 + variance * 0.01)
            x = tf.nn.relu(x)
            if i in (1, 3):
                x = tf.nn.max_pool2d(x, 2, 2, "VALID", data_format=layout)
        if layout == "NCHW":
            x = tf.transpose(x, [0, 2, 3, 1])  # flatten in the model's order
        x = tf.nn.relu(tf.reshape(x, [tf.shape(x)[0], -1]) @ params["fc1"] + params["fc1_bias"])
        return x @ params["fco"] + params["fco_bias"]

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=forward(x)))
        names = list(params)
        grads = tape.gradient(loss, [params[k] for k in names])
        step_count.assign_add(1.0)
        rate = 1e-3 * tf.sqrt(1 - 0.999 ** step_count) / (1 - 0.9 ** step_count)
        for name, grad in zip(names, grads):  # Adam, as bench.raw_tf
            m, v = slots[name]
            m.assign_add((grad - m) * 0.1)
            v.assign_add((grad * grad - v) * 0.001)
            params[name].assign_sub(rate * m / (tf.sqrt(v) + 1e-8))

    batch = args.batch_size
    batches = [(tf.constant(rng.random((batch, 28, 28, 1), "float32")),
                tf.one_hot(rng.integers(0, 10, batch), 10)) for _ in range(16)]

    def run(steps: int) -> float:
        start_time = time.perf_counter()
        for s in range(steps):
            train_step(*batches[s % len(batches)])
        params["fco_bias"].numpy()  # waits for the last step
        return steps * batch / (time.perf_counter() - start_time)

    run(5)  # tracing, and oneDNN's first-call set-up
    windows = [run(args.steps)] if args.profile else [run(args.steps) for _ in range(args.windows)]
    return {"variant": args.worker, "images_per_second": statistics.median(windows),
            "windows_images_per_second": windows, "machine": machine()}


def _run(variant: str, args, profile: bool) -> tuple[dict, str]:
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
