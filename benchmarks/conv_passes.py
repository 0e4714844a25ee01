"""Each convolution of the model alone: its forward pass, input gradient and weight gradient, per backend.

    python -m benchmarks.conv_passes [--backends tensorflow,jax] [--batch-size 128] [--slices 32,16,8]
                                     [--calls 21] [--out DIR]

A training step's time is mostly its convolutions' (docs/performance.md), and
a profile cannot split it on XLA:CPU (its convolutions finish after their
events end). So each pass of each convolution (the model's shapes, random
data) is compiled alone and timed: the median of ``--calls`` calls, each
waiting for its result, in a fresh process per backend with the project's
settings (``runtime.start``: oneDNN, the XLA flags). Besides each backend's own
form, the forms tried against it:

- both: the input gradient as a forward convolution of the upstream gradient
  padded by 2, with the kernel flipped and its channels swapped;
- JAX: the weight gradient summed over slices of ``--slices`` images
  (``jax_cpu.conv_with_sliced_weight_gradient``), and each pass by oneDNN as an
  XLA custom call (``jax_onednn``, where oneDNN is installed);
- TensorFlow: the weight gradient as nine
  per-tap matrix products, and as one product of ``extract_patches``' patches.

Every form's result is checked against the backend's own before it is timed.
Times alone are not the step's: in a step XLA and TensorFlow overlap
independent operations, and the slices that halve conv1's weight gradient
alone gain 0-4 % in the step (``benchmarks.jax_cpu_remedies``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from mnist_multibackend.bench.report import write_results
from mnist_multibackend.bench.workers import answer_json, run_worker
from mnist_multibackend.runtime import BACKENDS, cpu_line, machine, start

# name -> (input height = width, input channels, output channels): the model's 3x3 VALID convolutions.
CONVS = {"conv0": (28, 1, 32), "conv1": (26, 32, 32), "conv2": (12, 32, 64), "conv3": (10, 64, 64)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv_passes", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--slices", default="32,16,8", help="JAX: images per slice of a sliced weight gradient")
    parser.add_argument("--calls", type=int, default=21)
    parser.add_argument("--out", default="runs/conv-passes")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    args.slices = [int(s) for s in args.slices.split(",") if s]
    return args


def _median_ms(call, calls: int) -> float:
    call(), call()  # compile, warm up
    times = []
    for _ in range(calls):
        start_time = time.perf_counter()
        call()
        times.append(time.perf_counter() - start_time)
    return 1e3 * statistics.median(times)


def _data(batch: int, height: int, channels: int, filters: int):
    rng = np.random.default_rng(0)
    out = height - 2
    return (rng.standard_normal((batch, height, height, channels), dtype=np.float32),
            rng.standard_normal((3, 3, channels, filters), dtype=np.float32) / 10,
            rng.standard_normal((batch, out, out, filters), dtype=np.float32))


def jax_passes(args) -> list[dict]:
    import functools

    import jax

    from mnist_multibackend import jax_onednn
    from mnist_multibackend.jax_cpu import conv_with_sliced_weight_gradient
    from mnist_multibackend.jax_cpu import valid_conv as conv

    rows = []
    for name, shape in CONVS.items():
        x, k, dy = (jax.device_put(a) for a in _data(args.batch_size, *shape))
        forms = {"forward": (jax.jit(conv), (x, k)),
                 "input gradient": (jax.jit(lambda dy, k: jax.vjp(lambda v: conv(v, k), x)[1](dy)[0]), (dy, k)),
                 "input gradient, as a forward convolution": (jax.jit(
                     lambda dy, k: conv(jax.numpy.pad(dy, ((0, 0), (2, 2), (2, 2), (0, 0))), _flipped(k))), (dy, k)),
                 "weight gradient": (jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), k)[1](dy)[0]), (x, dy))}
        for size in args.slices:
            sliced = functools.partial(conv_with_sliced_weight_gradient, slice_size=size)
            forms[f"weight gradient, slices of {size}"] = (
                jax.jit(lambda x, dy, f=sliced: jax.vjp(lambda w: f(x, w), k)[1](dy)[0]), (x, dy))
        if jax_onednn.available():  # oneDNN's pass as XLA's custom call (jax_onednn), where it is installed
            forms.update({
                "forward, oneDNN": (jax.jit(jax_onednn.conv), (x, k)),
                "input gradient, oneDNN": (jax.jit(lambda dy, k: jax_onednn.conv_input_gradient(dy, k, x.shape)),
                                           (dy, k)),
                "weight gradient, oneDNN": (jax.jit(lambda x, dy: jax_onednn.conv_weight_gradient(x, dy, k.shape)),
                                            (x, dy))})
        rows += _time_forms(name, forms, lambda f, a: jax.block_until_ready(f(*a)), args.calls)
    return rows


def _flipped(kernel):
    """The kernel that turns a convolution's upstream gradient, padded by 2, into its input gradient."""
    return kernel[::-1, ::-1].swapaxes(2, 3)


def tensorflow_passes(args) -> list[dict]:
    import tensorflow as tf

    rows = []
    for name, (height, channels, filters) in CONVS.items():
        x, k, dy = (tf.constant(a) for a in _data(args.batch_size, height, channels, filters))
        out = height - 2
        strides = [1, 1, 1, 1]

        def input_gradient_as_forward(dy, k):
            return tf.nn.conv2d(dy, tf.transpose(tf.reverse(k, [0, 1]), [0, 1, 3, 2]), 1, [[0, 0], [2, 2], [2, 2], [0, 0]])

        def weight_gradient_per_tap(x, dy):
            upstream = tf.reshape(dy, [-1, filters])
            taps = [tf.matmul(tf.reshape(x[:, i:i + out, j:j + out, :], [-1, channels]), upstream, transpose_a=True)
                    for i in range(3) for j in range(3)]
            return tf.reshape(tf.stack(taps), [3, 3, channels, filters])

        def weight_gradient_of_patches(x, dy):
            patches = tf.image.extract_patches(x, [1, 3, 3, 1], strides, [1, 1, 1, 1], "VALID")
            return tf.reshape(tf.matmul(tf.reshape(patches, [-1, 9 * channels]), tf.reshape(dy, [-1, filters]),
                                        transpose_a=True), [3, 3, channels, filters])

        forms = {
            "forward": (lambda x, k: tf.nn.conv2d(x, k, 1, "VALID"), (x, k)),
            "input gradient": (lambda dy, k: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=list(x.shape), filter=k, out_backprop=dy, strides=strides, padding="VALID"), (dy, k)),
            "input gradient, as a forward convolution": (input_gradient_as_forward, (dy, k)),
            "weight gradient": (lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=list(k.shape), out_backprop=dy, strides=strides, padding="VALID"), (x, dy)),
            "weight gradient, per-tap matmuls": (weight_gradient_per_tap, (x, dy)),
            "weight gradient, patches matmul": (weight_gradient_of_patches, (x, dy)),
        }
        forms = {form: (tf.function(fn), inputs) for form, (fn, inputs) in forms.items()}
        rows += _time_forms(name, forms, lambda f, a: f(*a).numpy(), args.calls)
    return rows


def _time_forms(conv: str, forms: dict, run, calls: int) -> list[dict]:
    """Time each form; each must give its pass's result (the backend's own form, the first of its pass)."""
    rows, reference = [], {}
    for form, (fn, inputs) in forms.items():
        result = np.asarray(run(fn, inputs))
        own = reference.setdefault(form.split(",")[0], result)
        error = float(np.max(np.abs(result - own)) / max(float(np.max(np.abs(own))), 1e-30))
        if error > 1e-4:
            raise AssertionError(f"{conv} {form}: off by {error:.1e} of the largest element")
        rows.append({"conv": conv, "form": form, "ms": _median_ms(lambda: run(fn, inputs), calls),
                     "relative_difference": error})
    return rows


def worker(args) -> dict:
    runtime = start(args.worker, "cpu")
    rows = jax_passes(args) if args.worker == "jax" else tensorflow_passes(args)
    return {"backend": args.worker, "runtime": runtime.as_dict(), "rows": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return answer_json(lambda: worker(args))
    command = " ".join(["python -m benchmarks.conv_passes", *(argv if argv is not None else sys.argv[1:])])
    answers = [{"backend": backend, **run_worker(
        "benchmarks.conv_passes", ["--worker", backend, "--batch-size", args.batch_size, "--calls", args.calls,
                                   "--slices", ",".join(map(str, args.slices))], label=f"conv passes: {backend}")}
               for backend in args.backends]
    results = {"command": command, "batch_size": args.batch_size, "calls": args.calls, "machine": machine(),
               "backends": answers}
    report = markdown(results)
    write_results(args.out, results, report)
    print(report)
    return 0 if all(a["status"] == "ok" for a in answers) else 1


def markdown(results: dict) -> str:
    lines = ["# Each convolution's passes alone", "",
             f"Command: `{results['command']}`.", f"Machine: {cpu_line(results['machine'])}.",
             f"Batch {results['batch_size']}; median of {results['calls']} calls, each waiting for its result.", "",
             "| backend | conv | form | ms | GFLOP/s |", "|---|---|---|---|---|"]
    for answer in results["backends"]:
        if answer["status"] != "ok":
            lines.append(f"| {answer['backend']} | – | failed: {answer.get('reason')} | | |")
            continue
        for row in answer["rows"]:
            height, channels, filters = CONVS[row["conv"]]
            flops = 2 * results["batch_size"] * (height - 2) ** 2 * 9 * channels * filters
            lines.append(f"| {answer['backend']} | {row['conv']} | {row['form']} | {row['ms']:.2f} | "
                         f"{flops / row['ms'] / 1e6:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
