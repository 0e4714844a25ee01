"""TensorFlow on the CPU: the training throughput of one option at a time, each in a fresh process.

    python -m benchmarks.tf_cpu_options [--images 19200] [--windows 3] [--out DIR]

Every variant trains the model with ``model.fit`` on real MNIST images, fed as
the project feeds them (``feeding.EpochBatches``), and changes one thing
against the project's default (32 steps per execution, batch 128, TensorFlow's
own thread pools, oneDNN on, fused batch norm, float32): steps per execution,
inter-op threads, batch size, oneDNN, mixed ``bfloat16`` precision, Keras's own
batch norm. Threads and oneDNN must be
set before TensorFlow starts, hence a process per variant. The figure is the
median of ``--windows`` epochs of ``--images`` images after a warm-up; the
default variant runs first and last, to show how far the machine drifted.
A variant whose worker fails is an error row, and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from mnist_multibackend.bench.report import exit_status, write_results
from mnist_multibackend.bench.workers import answer_json, failed, run_worker

DEFAULT = {"steps_per_execution": 32, "batch_size": 128}
VARIANTS = [
    ("default (EpochBatches, 32 steps per execution)", {}),
    ("1 step per execution", {"steps_per_execution": 1}),
    ("8 steps per execution", {"steps_per_execution": 8}),
    ("128 steps per execution", {"steps_per_execution": 128}),
    ("inter-op threads 1", {"inter_op_threads": 1}),
    ("intra-op threads 1", {"intra_op_threads": 1}),
    ("batch 256 (changes the recipe)", {"batch_size": 256}),
    ("oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)", {"onednn": False}),
    ("oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)", {"onednn": True}),
    ("mixed_bfloat16 (changes the numerics)", {"policy": "mixed_bfloat16"}),
    ("default again", {}),
    ("Keras's own batch norm (not fused: no tf_cpu.speed_up)", {"fused_batch_norm": False}),
]


def worker(settings: dict, images: int, windows: int, data_path: str | None) -> dict:
    if "onednn" in settings:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if settings["onednn"] else "0"  # read when TensorFlow loads
    from mnist_multibackend.runtime import start

    start("tensorflow", "cpu")
    import keras
    import tensorflow as tf

    if "inter_op_threads" in settings:
        tf.config.threading.set_inter_op_parallelism_threads(settings["inter_op_threads"])
    if "intra_op_threads" in settings:
        tf.config.threading.set_intra_op_parallelism_threads(settings["intra_op_threads"])
    if "policy" in settings:
        keras.mixed_precision.set_global_policy(settings["policy"])
    from mnist_multibackend import data
    from mnist_multibackend.model import build_model, compile_model
    from mnist_multibackend.feeding import EpochBatches
    from mnist_multibackend.training import speed_up

    options = {**DEFAULT, **settings}
    dataset = data.load_dataset(data_path)
    x, y = data.as_model_input(dataset.x_train[:images]), data.one_hot(dataset.y_train[:images])
    model = compile_model(build_model())
    if settings.get("fused_batch_norm", True):
        speed_up(model)  # as train() does: fused batch norm on TensorFlow/CPU
    model.steps_per_execution = options["steps_per_execution"]
    batches = EpochBatches(x, y, options["batch_size"], seed=0)
    model.fit(batches, epochs=1, verbose=0)  # warm-up: tracing and compilation
    rates = []
    for epoch in range(1, windows + 1):
        batches.epoch = epoch
        start_time = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        rates.append(images / (time.perf_counter() - start_time))
    return {"images_per_second": statistics.median(rates), "windows_images_per_second": rates,
            "load_average_1min": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tf_cpu_options", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=19200)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--data")
    parser.add_argument("--out", default="runs/tf-cpu-options")
    parser.add_argument("--variants", help="comma-separated numbers (from 1) of the variants to run, in that "
                                           "order, repeats allowed (default: all): " +
                                           "; ".join(f"{i} {name}" for i, (name, _) in enumerate(VARIANTS, 1)))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON settings of one variant
    args = parser.parse_args(argv)
    if args.worker:
        return answer_json(lambda: worker(json.loads(args.worker), args.images, args.windows, args.data))
    rows = []
    chosen = [VARIANTS[int(i) - 1] for i in args.variants.split(",")] if args.variants else VARIANTS
    for name, settings in chosen:
        worker_args = ["--worker", json.dumps(settings), "--images", args.images, "--windows", args.windows]
        worker_args += ["--data", args.data] if args.data else []
        answer = run_worker("benchmarks.tf_cpu_options", worker_args, label=f"tf-cpu-options: {name}", echo=False)
        rows.append({"variant": name, "settings": settings, **answer})
        if answer["status"] == "ok":
            print(f"tf-cpu-options: {name}: {answer['images_per_second']:,.0f} images/s", file=sys.stderr, flush=True)
    base = rows[0]["images_per_second"] if rows[0]["status"] == "ok" else None
    lines = ["| variant | images/s (median) | ÷ default | windows | load 1 min |", "|---|---|---|---|---|"]
    for row in rows:
        if row["status"] == "error":
            lines.append(f"| {row['variant']} | failed{exit_status(row)}: {row['reason']} | | | |")
            continue
        ratio = f"{row['images_per_second'] / base:.2f}" if base else "–"
        windows = ", ".join(f"{r:,.0f}" for r in row["windows_images_per_second"])
        lines.append(f"| {row['variant']} | {row['images_per_second']:,.0f} | {ratio} "
                     f"| {windows} | {row['load_average_1min']:.2f} |")
    table = "\n".join(lines)
    command = "python -m benchmarks.tf_cpu_options " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.out, {"command": command, "rows": rows},
                  f"# TensorFlow CPU options\n\nCommand: `{command}`\n\n{table}\n")
    print(table)
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
