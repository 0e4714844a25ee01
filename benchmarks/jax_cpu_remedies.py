"""Formulations of the model's math on JAX/CPU compared in one process: same results? how much faster?

Run::

    python -m benchmarks.jax_cpu_remedies [--batch-size 128] [--rounds 10] [--out FILE.json]

Each variant is the plain model (Keras's own computations) with some of
``mnist_multibackend.jax_cpu``'s forms applied: each convolution on its own as
SAME + crop, the max pools' mask gradient, and ``kept``, what ``training.train``
applies. All start from the same state (weights, optimizer, dropout seed).

- correctness: the largest difference from the plain model in the predicted
  probabilities of the batch, and in the loss over the first ``--check-steps``
  training steps;
- speed: Keras's compiled training step (``model.train_step`` under
  ``jax.jit``, as ``fit`` runs it), ``--steps`` steps per window; the windows
  of all variants alternate, round by round, so that other programs on the
  machine slow them alike; the first round only warms up. Ratios are the
  median over rounds of plain's step time over the variant's, in the same round.
  Then ``model.fit`` itself, plain against ``kept``, the same way
  (``mnist_multibackend.bench.timing.measure``).

The ``ablation:`` variants are not remedies: some weight gradients are zeros,
or some layers' work is left out, on purpose, so that the step time they save
tells what that work costs inside the step, which XLA:CPU's profile cannot show.

XLA flags are per process: compare them by running this in alternate processes
with and without ``XLA_FLAGS``; the flags in use are printed and recorded.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import time

import numpy as np

from mnist_multibackend.atomic import write_text
from mnist_multibackend.runtime import machine, start

VARIANTS = {  # name -> keyword arguments of jax_cpu.speed_up; None: the plain model
    "plain": None,
    # Keras's own convolutions with the pools' mask gradient: what train() keeps where xla_cpu_flags is in force.
    "pool mask gradient": {"same_padded_convs": (), "matmul_convs": (), "mask_pool_gradient": True},
    # XLA's convolutions with weight gradients summed over slices of images (jax_cpu.WEIGHT_GRADIENT_SLICE).
    "pool mask + sliced weight gradients": {"same_padded_convs": (), "matmul_convs": (),
                                            "sliced_weight_gradient_convs": ("conv1", "conv2", "conv3")},
    "pool mask + all four sliced": {"same_padded_convs": (), "matmul_convs": (),
                                    "sliced_weight_gradient_convs": ("conv0", "conv1", "conv2", "conv3")},
    **{f"{conv} SAME+crop": {"same_padded_convs": (conv,), "mask_pool_gradient": False}
       for conv in ("conv0", "conv1", "conv2", "conv3")},
    **{f"{conv} matmul": {"same_padded_convs": (), "mask_pool_gradient": False, "matmul_convs": (conv,)}
       for conv in ("conv0", "conv1", "conv2", "conv3")},
    "all matmul + pool mask": {"same_padded_convs": (), "matmul_convs": ("conv0", "conv1", "conv2", "conv3")},
    "conv1-3 matmul + pool mask": {"same_padded_convs": (), "matmul_convs": ("conv1", "conv2", "conv3")},
    "conv1 matmul + pool mask": {"same_padded_convs": (), "matmul_convs": ("conv1",)},
    "conv1-2 matmul + pool mask": {"same_padded_convs": (), "matmul_convs": ("conv1", "conv2")},
    "kept": {},
    # XLA's forms with oneDNN's convolutions instead, all three passes (jax_onednn): kept where the CPU has AVX2.
    "pool mask + oneDNN convolutions": {"same_padded_convs": (), "matmul_convs": (),
                                            "onednn_convs": ("conv0", "conv1", "conv2", "conv3")},
    # The matmul forms with each input gradient computed by XLA's own transposed convolution instead of the
    # matmul's (conv1's is a f32[73728, 288] product, then a col2im sum): xla_input_gradient() below.
    "all matmul + XLA input gradients": {"same_padded_convs": (), "matmul_convs": ("conv0", "conv1", "conv2", "conv3")},
    "conv1 matmul + XLA input gradient": {"same_padded_convs": (), "matmul_convs": ("conv0", "conv1", "conv2", "conv3")},
}
# Each variant rebinds only what it names; "kept" alone takes this process's choices (jax_cpu.chosen_conv_forms).
for _variant, _forms in VARIANTS.items():
    if _forms and _variant != "kept":
        _forms.setdefault("sliced_weight_gradient_convs", ())
        _forms.setdefault("onednn_convs", ())
        _forms.setdefault("batch_norm", False)  # each earlier study as it was measured: Keras's batch norm
        _forms.setdefault("batch_norm_relu", False)
# Kept's forms with Keras's own batch norm: what jax_cpu.batch_norm_training is measured against.
VARIANTS["kept with Keras's batch norm"] = {"batch_norm": False}
# Kept's forms with each batch norm and the ReLU after it computed apart (jax_cpu's form before they were one).
VARIANTS["kept with batch norm and ReLU apart"] = {"batch_norm_relu": False}
# Other slice sizes for the weight gradients (conv -> images per slice; a conv not named keeps XLA's
# whole-batch gradient), over the pools' mask gradient: measured in the step no faster than kept's 32.
SLICE_SIZES = {"slices 8/16/whole": {"conv1": 8, "conv2": 16}, "slices 16/16/whole": {"conv1": 16, "conv2": 16},
               "slices 8/8/8": {"conv1": 8, "conv2": 8, "conv3": 8}, "slices 8/32/32": {"conv1": 8, "conv2": 32, "conv3": 32}}
VARIANTS.update({name: {"same_padded_convs": (), "matmul_convs": (), "sliced_weight_gradient_convs": (),
                        "onednn_convs": (), "batch_norm": False} for name in SLICE_SIZES})
# Ablations, not remedies: kept with some convolutions' weight gradients replaced by zeros (wrong gradients
# on purpose). The step time they save is what those passes cost inside the step, which the profiler cannot
# show on XLA:CPU (its convolutions finish after their events end). Weight gradients only: a zero input
# gradient would let XLA fold away everything upstream of it too (the earlier layers' backward passes).
ABLATIONS = {"ablation: conv1 without weight gradient": ("conv1",),
             "ablation: conv2-3 without weight gradients": ("conv2", "conv3"),
             "ablation: conv1-3 without weight gradients": ("conv1", "conv2", "conv3")}
VARIANTS.update({name: {} for name in ABLATIONS})  # kept's forms, then the ablation over them
# Kept without the convolutions' bias additions (and their gradients): the most that adding the bias inside
# oneDNN's convolution could save (a pass over each convolution's output, which XLA cannot fuse into a custom call).
NO_BIAS_ABLATION = "ablation: convolutions without bias"
VARIANTS[NO_BIAS_ABLATION] = {}
# Kept with its batch norms as identities (and with no bias either): the most that any faster batch norm
# could save (oneDNN's, with the ReLU after it fused in, was studied: docs/performance.md, "The Ice Lake host").
NO_BATCH_NORM_ABLATIONS = {"ablation: batch norms as identities": False,
                           "ablation: batch norms as identities and convolutions without bias": True}
VARIANTS.update({name: {"batch_norm_relu": False} for name in NO_BATCH_NORM_ABLATIONS})  # the ReLUs kept
XLA_INPUT_GRADIENT = {"all matmul + XLA input gradients": ("conv0", "conv1", "conv2", "conv3"),
                      "conv1 matmul + XLA input gradient": ("conv1",)}


def xla_input_gradient():
    """``jax_cpu.conv_as_one_matmul`` for the forward pass and the weight gradient, with the input gradient of
    XLA's plain VALID convolution (a study: measured no faster, not in ``jax_cpu``)."""
    import jax
    import jax.numpy as jnp

    from mnist_multibackend.jax_cpu import conv_as_one_matmul, valid_conv

    @jax.custom_vjp
    def conv(x, kernel):
        return conv_as_one_matmul(x, kernel)

    def forward(x, kernel):
        return conv_as_one_matmul(x, kernel), (x, kernel)

    def backward(residuals, grad):
        x, kernel = residuals
        _, kernel_vjp = jax.vjp(lambda k: conv_as_one_matmul(x, k), kernel)
        _, input_vjp = jax.vjp(lambda v: valid_conv(v, kernel), x)
        return input_vjp(grad)[0], kernel_vjp(grad)[0]

    conv.defvjp(forward, backward)
    return lambda inputs, kernel: conv(jnp.asarray(inputs), jnp.asarray(kernel))


def without_weight_gradient():
    """XLA's VALID convolution (as ``keras.ops.conv``) whose kernel gradient is zeros; its input gradient is
    XLA's, as kept's."""
    import jax
    import jax.numpy as jnp

    from mnist_multibackend.jax_cpu import valid_conv

    @jax.custom_vjp
    def ablated(x, kernel):
        return valid_conv(x, kernel)

    def backward(residuals, grad):
        x, kernel = residuals
        return jax.vjp(lambda v: valid_conv(v, kernel), x)[1](grad)[0], jnp.zeros_like(kernel)

    ablated.defvjp(lambda x, kernel: (valid_conv(x, kernel), (x, kernel)), backward)
    return lambda inputs, kernel: ablated(jnp.asarray(inputs), jnp.asarray(kernel))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jax_cpu_remedies", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (plus one warm-up round)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per window")
    parser.add_argument("--check-steps", type=int, default=3, help="steps whose losses are compared")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--no-fit", action="store_true", help="skip the model.fit comparison")
    parser.add_argument("--data", help="MNIST location, as for mnist-mb train")
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or args.variants[0] != "plain":
        parser.error(f"--variants must start with plain and name known variants. Received: {args.variants}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = start("jax", "cpu")
    import jax
    import keras

    from mnist_multibackend import data
    from mnist_multibackend.jax_cpu import conv_with_sliced_weight_gradient, speed_up
    from mnist_multibackend.keras_private import jax_train_state
    from mnist_multibackend.model import build_model, compile_model

    load_start = os.getloadavg()
    dataset = data.load_dataset(args.data)
    x = data.as_model_input(dataset.x_train[:args.batch_size])
    y = data.one_hot(dataset.y_train[:args.batch_size])
    batch = (jax.device_put(x), jax.device_put(y), None)
    config = build_model().get_config()

    def model_for(variant):
        # From the config: Keras's own computations. A copy each time: from_config consumes parts of it.
        model = compile_model(keras.Model.from_config(copy.deepcopy(config)))
        if VARIANTS[variant] is not None:
            speed_up(model, **VARIANTS[variant])
        for name in XLA_INPUT_GRADIENT.get(variant, ()):
            model.get_layer(name).convolution_op = xla_input_gradient()
        for name in ABLATIONS.get(variant, ()):
            model.get_layer(name).convolution_op = without_weight_gradient()
        if variant == NO_BIAS_ABLATION:
            for name in ("conv0", "conv1", "conv2", "conv3"):
                model.get_layer(name).use_bias = False  # Keras's call then skips the addition
        if variant in NO_BATCH_NORM_ABLATIONS:
            for name in ("bn0", "bn1", "bn2", "bn3"):
                model.get_layer(name).call = lambda inputs, training=None, mask=None: inputs
            for name in ("conv0", "conv1", "conv2", "conv3"):
                model.get_layer(name).use_bias = not NO_BATCH_NORM_ABLATIONS[variant]
        for name, size in SLICE_SIZES.get(variant, {}).items():
            model.get_layer(name).convolution_op = functools.partial(conv_with_sliced_weight_gradient, slice_size=size)
        model.train_on_batch(x, y)  # builds the optimizer and metric variables of the step's state
        return model

    models = {variant: model_for(variant) for variant in args.variants}
    # One starting state for all, copied to the host: each variant's steps consume (donate) their own copy.
    start_state = jax.device_get(jax_train_state(models["plain"]))

    def fresh_state():
        return jax.tree.map(jax.numpy.asarray, start_state)

    steps, checks = {}, {}
    for variant, model in models.items():
        step = jax.jit(model.train_step, donate_argnums=0).lower(fresh_state(), batch).compile()
        state, losses = fresh_state(), []
        for _ in range(args.check_steps):
            logs, state = step(state, batch)
            losses.append(float(logs["loss"]))
        trainable, non_trainable = fresh_state()[:2]
        probabilities = np.asarray(model.stateless_call(trainable, non_trainable, batch[0], training=False)[0])
        checks[variant] = (losses, probabilities)
        steps[variant] = [step, fresh_state()]
    plain_losses, plain_probabilities = checks["plain"]

    windows = {variant: [] for variant in steps}
    for round_ in range(args.rounds + 1):
        for variant, entry in steps.items():
            step, state = entry
            start_time = time.perf_counter()
            for _ in range(args.steps):
                _, state = step(state, batch)
            entry[1] = jax.block_until_ready(state)
            if round_:
                windows[variant].append(1e3 * (time.perf_counter() - start_time) / args.steps)

    rows = []
    for variant, ms in windows.items():
        losses, probabilities = checks[variant]
        rows.append({
            "variant": variant, "rebinds": VARIANTS[variant], "ms_per_step": statistics.median(ms),
            "speedup_vs_plain": statistics.median(p / v for p, v in zip(windows["plain"], ms)),
            "window_ms": [round(v, 1) for v in ms], "losses": losses,
            "max_abs_loss_diff": max(abs(a - b) for a, b in zip(losses, plain_losses)),
            "max_abs_probability_diff": float(np.max(np.abs(probabilities - plain_probabilities))),
        })
    fit = None if args.no_fit or "kept" not in models else measure_fit(models, x, y, args)
    report = {"batch_size": args.batch_size, "steps_per_window": args.steps, "rounds": args.rounds,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "runtime": runtime.as_dict(), "machine": machine(),
              "load_average_start": [round(v, 2) for v in load_start],
              "load_average_end": [round(v, 2) for v in os.getloadavg()], "train_step": rows, "fit": fit}
    print(format_report(report))
    if args.out:
        write_text(args.out, json.dumps(report, indent=1))
    return 0


def measure_fit(models, x, y, args) -> dict:
    """``model.fit`` images/s of plain and kept, windows interleaved (``timing.measure``), on real images."""
    from mnist_multibackend import data
    from mnist_multibackend.callbacks import EpochTimer

    from mnist_multibackend.bench.timing import measure, paired_ratio

    dataset = data.load_dataset(args.data)
    images = data.as_model_input(dataset.x_train[:20 * args.batch_size])
    labels = data.one_hot(dataset.y_train[:20 * args.batch_size])

    def fit_run(model):
        def run(steps: int) -> float:
            timer = EpochTimer()
            model.fit(images[:steps * args.batch_size], labels[:steps * args.batch_size], batch_size=args.batch_size,
                      epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            return timer.seconds[0]
        return run

    measured = measure({"plain": fit_run(models["plain"]), "kept": fit_run(models["kept"])},
                       batch_size=args.batch_size, max_steps=20, window_seconds=1.5, windows=max(3, args.rounds // 2))
    return {name: {"images_per_second": m.images_per_second, "window_images_per_second": m.window_images_per_second,
                   "steps_per_window": m.steps_per_window} for name, m in measured.items()} | {
        "speedup_kept_vs_plain": paired_ratio(measured["kept"], measured["plain"])}


def format_report(report: dict) -> str:
    lines = [f"JAX/CPU, batch {report['batch_size']}, XLA_FLAGS={report['xla_flags']!r}, load average "
             f"{report['load_average_start']} -> {report['load_average_end']}",
             f"{'variant':20} {'ms/step':>8} {'vs plain':>9} {'max |dloss|':>12} {'max |dprob|':>12}"]
    lines += [f"{r['variant']:20} {r['ms_per_step']:8.1f} {r['speedup_vs_plain']:8.2f}x "
              f"{r['max_abs_loss_diff']:12.2e} {r['max_abs_probability_diff']:12.2e}" for r in report["train_step"]]
    fit = report["fit"]
    if fit:
        lines.append(f"model.fit: plain {fit['plain']['images_per_second']:.0f} images/s, kept "
                     f"{fit['kept']['images_per_second']:.0f} images/s, kept/plain {fit['speedup_kept_vs_plain']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
