"""One backend on one device: training and inference throughput, Keras and raw, against the matmul peak.

Run as a fresh process per backend and device (a process can hold one Keras backend)::

    python -m mnist_multibackend.bench.throughput --backend jax --device cpu --batch-sizes 32,128,512

It prints one JSON object on stdout: the rows of the throughput matrix, the
matmul peak, the model's FLOPs per image and the machine. When the device is
not available (``--device gpu`` and the backend sees none), it prints one row
with ``"status": "unavailable"`` and the reason, and exits 0.

The images are real MNIST training images (``data.load_dataset``), scaled as in
training; the same first images are used for every window.
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

from mnist_multibackend.errors import InputError
from mnist_multibackend.runtime import BACKENDS, machine, start

from .workers import answer_json

MAX_IMAGES = 60000  # the whole training split at most: windows never repeat an image within themselves
PEAK_WINDOWS_BETWEEN = 2  # matmul windows after each batch size, besides the first --windows ones
DATA_NOTE = ("real MNIST training images (data.load_dataset), scaled to [0, 1] as in training; "
             "a window of N steps uses the first N x batch-size images")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mnist_multibackend.bench.throughput",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--device", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--batch-sizes", default="32,128,512", help="comma-separated (default: 32,128,512)")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per row; the median counts")
    parser.add_argument("--window-seconds", type=float, default=1.5, help="target length of one window")
    parser.add_argument("--data", help="MNIST location, as for mnist-mb train")
    parser.add_argument("--replicas", type=int, default=1,
                        help="data-parallel replicas (on cpu: that many logical CPU devices); above 1, "
                             "only Keras training is measured")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return answer_json(lambda: run(args))


def run(args) -> dict:
    target = {"backend": args.backend, "device": args.device, "replicas": args.replicas}
    try:
        # The device count is fixed when the backend starts: logical CPU devices are made here.
        cpu_devices = args.replicas if args.replicas > 1 and args.device == "cpu" else None
        runtime = start(args.backend, args.device, cpu_devices=cpu_devices)
        if len(runtime.devices) < args.replicas:
            raise InputError("--replicas", f"{args.replicas} replicas need {args.replicas} {args.device} devices; "
                                           f"the {args.backend} backend sees {len(runtime.devices)}")
    except InputError as err:
        return {**target, "status": "unavailable", "reason": str(err), "machine": _host(),
                "rows": [unavailable_row(**target, status="unavailable", reason=str(err), machine=_host())]}
    _log(f"{runtime.describe()}")

    import keras

    from mnist_multibackend import data
    from mnist_multibackend.model import build_model

    from . import flops, peak

    host = _host(runtime)
    dataset = data.load_dataset(args.data)
    images = min(len(dataset.x_train), MAX_IMAGES)
    x, y = data.as_model_input(dataset.x_train[:images]), data.one_hot(dataset.y_train[:images])

    cost = flops.flops_per_image(build_model())
    matmul = peak.MatmulPeak(args.backend, args.window_seconds)
    matmul.sample(args.windows)
    _log(f"dense fp32 matmul: {max(matmul.rates):.0f} GFLOP/s in the best window so far")

    rows = []
    measure_rows = measure_batch_size if args.replicas == 1 else measure_data_parallel
    for batch_size in args.batch_sizes:
        for measured in measure_rows(args, runtime, x, y, batch_size):
            gflops = measured["images_per_second"] * cost["train" if measured["mode"] == "train" else "forward"] / 1e9
            rows.append({**target, "batch_size": batch_size, **measured, "status": "ok", "gflops": gflops,
                         "machine": host})
            _log(f"{args.backend} {args.device} {measured['impl']:5} {measured['mode']:5} batch {batch_size:4}: "
                 f"{measured['images_per_second']:8.0f} images/s, {gflops:6.1f} GFLOP/s, "
                 f"compile {measured['compile_seconds']:.2f} s")
        keras.backend.clear_session()
        matmul.sample(PEAK_WINDOWS_BETWEEN)
    summary = matmul.summary()
    _log(f"dense fp32 matmul peak {summary['gflops']:.0f} GFLOP/s (best of {summary['windows']} windows)")
    for row in rows:
        row.update(backend_peak_gflops=summary["gflops"], pct_of_backend_peak=100 * row["gflops"] / summary["gflops"])
    return {**target, "status": "ok", "runtime": runtime.as_dict(), "machine": host, "peak": summary,
            "flops_per_image": cost, "data": DATA_NOTE, "rows": rows}


def unavailable_row(**fields) -> dict:
    """A row with the matrix's keys but no measurement (``status`` and ``reason`` say why)."""
    empty = dict.fromkeys(("batch_size", "mode", "impl", "images_per_second", "gflops", "pct_of_peak",
                           "compile_seconds", "load_average_1min"))
    return {**empty, **fields}


class KerasPaths:
    """The project's own paths at one batch size, as ``mnist-mb train`` and ``predict`` run them: ``train(steps)``
    and ``infer(steps)`` run that many batches and return wall seconds, having waited for the device."""

    def __init__(self, runtime, x, y, batch_size: int):
        from mnist_multibackend.model import build_model, compile_model
        from mnist_multibackend.training import STEPS_PER_EXECUTION, speed_up

        self.x, self.y, self.batch_size = x, y, batch_size
        # Not seeded: keras.utils.set_random_seed imports TensorFlow, which has no place in a JAX process,
        # and the speed does not depend on the initial weights.
        # As mnist-mb train runs it: the CPU forms, 32 batches per execution on TensorFlow, 1 on JAX.
        model = build_model()
        speed_up(model)
        self.model = compile_model(model)
        self.model.steps_per_execution = STEPS_PER_EXECUTION[runtime.backend]
        self._forward = None

    def train(self, steps: int) -> float:
        from mnist_multibackend.callbacks import EpochTimer

        # The epoch's steps only, without fit()'s set-up; EpochTimer waits for the device.
        timer = EpochTimer()
        n = steps * self.batch_size
        self.model.fit(self.x[:n], self.y[:n], batch_size=self.batch_size, epochs=1, shuffle=False, verbose=0,
                       callbacks=[timer])
        return timer.seconds[0]

    def forward_pass(self):
        """Prediction as mnist-mb predict runs it: ``inference.ForwardPass`` around a model with Keras's own
        computations (see jax_cpu), holding the trained model's weights as they are at the first call."""
        if self._forward is None:
            from mnist_multibackend.inference import ForwardPass
            from mnist_multibackend.model import build_model

            predictor = build_model()
            predictor.set_weights(self.model.get_weights())
            self._forward = ForwardPass(predictor, self.batch_size)
        return self._forward

    def infer(self, steps: int) -> float:
        from .timing import timed

        # Host float32 images in, host probabilities out, so it has waited for the device.
        return timed(lambda: self.forward_pass().predict(self.x[:steps * self.batch_size]))


def measure_batch_size(args, runtime, x, y, batch_size: int) -> list[dict]:
    """Training, then inference, on a fresh model: Keras and the raw reference, their windows interleaved."""
    import keras

    from .core import batches, spec_from_keras
    from .timing import measure, paired_ratio, timed

    max_steps = len(x) // batch_size
    window = dict(batch_size=batch_size, max_steps=max_steps, window_seconds=args.window_seconds,
                  windows=args.windows)
    paths = KerasPaths(runtime, x, y, batch_size)
    model = paths.model
    jit_compile = bool(getattr(model, "jit_compile", False))
    device_batches = raw_reference(runtime.backend).to_device(batches(x, y, batch_size, max_steps))

    trainer = raw_reference(runtime.backend)(spec_from_keras(model), jit_compile=jit_compile)
    train = measure({"keras": paths.train, "raw": lambda steps: timed(lambda: trainer.train(device_batches[:steps]))},
                    **window)
    # A fresh reference with the trained weights, so that both predict the same thing, compiled as the
    # project's path is (TensorFlow: with XLA, see inference.tensorflow_xla), so that the ratio shows what
    # the path costs beyond the computation.
    forward = paths.forward_pass()
    predictor = raw_reference(runtime.backend)(spec_from_keras(model), jit_compile=forward.uses_xla)
    # Like for like: both sides start from host float32 batches and end with host probabilities (the
    # device-resident batches that training uses would spare the reference the copy to the device that
    # the project's path makes).
    host_batches = batches(x, y, batch_size, max_steps)
    infer = measure({"keras": paths.infer, "raw": lambda steps: timed(lambda: predictor.predict(host_batches[:steps]))},
                    **window)
    # The reference must compute what the model computes: same weights in, same probabilities out.
    difference = float(np.max(np.abs(predictor.predict(host_batches[:1])[0] - forward.predict(x[:batch_size]))))
    rows = []
    for mode, measured in (("train", train), ("infer", infer)):
        ratio = paired_ratio(measured["keras"], measured["raw"])
        framework = (f"keras {keras.__version__}: model.fit, {model.steps_per_execution} steps per execution"
                     if mode == "train" else f"keras {keras.__version__}: inference.ForwardPass "
                                             f"({'XLA' if forward.uses_xla else 'no XLA'})")
        rows.append({**_row("keras", mode, measured["keras"]), "keras_to_raw": ratio, "framework": framework})
        rows.append({**_row("raw", mode, measured["raw"]), "framework": trainer.framework,
                     "max_abs_diff_vs_keras": difference})
    return rows


def measure_data_parallel(args, runtime, x, y, batch_size: int) -> list[dict]:
    """Keras training data-parallel over ``args.replicas`` devices, the global batch split across them.

    There is no raw reference here (it runs on one device); the scaling efficiency against the
    one-device Keras row is added by ``matrix``, which sees both workers' rows.
    """
    import keras

    from mnist_multibackend.distribute import data_parallel
    from mnist_multibackend.callbacks import EpochTimer

    from .timing import measure

    from mnist_multibackend.training import speed_up

    replicas = data_parallel(runtime, args.replicas)
    model = replicas.build_model()
    speed_up(model)  # as train() does
    x_local, y_local, local_batch = replicas.local_share(x, y, batch_size)

    def keras_train(steps: int) -> float:
        timer = EpochTimer()
        with replicas.scope():
            model.fit(x_local[:steps * local_batch], y_local[:steps * local_batch], batch_size=local_batch,
                      epochs=1, shuffle=False, verbose=0, callbacks=[timer, *replicas.callbacks])
        return timer.seconds[0]

    train = measure({"keras": keras_train}, batch_size=batch_size, max_steps=len(x_local) // local_batch,
                    window_seconds=args.window_seconds, windows=args.windows)
    engine = type(replicas.engine).__name__
    return [{**_row("keras", "train", train["keras"]),
             "framework": f"keras {keras.__version__}: model.fit, {replicas.count} replicas ({engine})"}]


def raw_reference(backend: str):
    """The raw reference's class for ``backend``; its ``jit_compile`` is the caller's choice: for training,
    Keras's for the model (TensorFlow: off on a CPU-only machine, on with a GPU), for inference the
    project's (``inference.ForwardPass.uses_xla``); JAX always compiles."""
    if backend == "jax":
        from .raw_jax import RawJax

        return RawJax
    from .raw_tf import RawTensorFlow

    return RawTensorFlow


def _row(impl: str, mode: str, m) -> dict:
    return {"impl": impl, "mode": mode, "images_per_second": m.images_per_second,
            "compile_seconds": m.compile_seconds, "steps_per_window": m.steps_per_window,
            "window_images_per_second": m.window_images_per_second, "cpu_share": m.cpu_share,
            "load_average_1min": m.load_average_1min}


def _host(runtime=None) -> dict:
    host = machine()
    del host["load_average_1min"]  # each row records its own, read as its measurement began
    if runtime is not None:
        host.update(gpu=_gpu_name(runtime), versions=_versions(runtime))
    return host


def _gpu_name(runtime) -> str | None:
    if runtime.device != "gpu":
        return None
    if runtime.backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return details.get("device_name", runtime.devices[0])


def _versions(runtime) -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__, "keras": runtime.keras_version,
                runtime.backend: runtime.backend_version}
    if runtime.backend == "jax":
        import jaxlib

        versions["jaxlib"] = jaxlib.__version__
    return versions


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
