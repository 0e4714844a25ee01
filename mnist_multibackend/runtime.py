"""Choose the Keras backend and the device, before Keras is imported.

Keras reads ``KERAS_BACKEND`` once, at its first import, and a process can hold
only one backend; device visibility, too, has to be settled before the backend
library initialises. So the command line calls ``start()`` first and imports
the modules that use Keras (``model``, ``training``) only afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys

from .errors import InputError

BACKENDS = ("tensorflow", "jax")
DEVICES = ("auto", "cpu", "gpu")
DEFAULT_BACKEND = "tensorflow"  # Keras's own default
# The pyproject extra that brings each backend's CUDA build.
GPU_EXTRAS = {"tensorflow": "tensorflow-gpu", "jax": "jax-gpu"}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What a run actually uses; recorded in ``metrics.json`` and printed at start."""

    backend: str
    backend_version: str
    keras_version: str
    device: str  # "cpu" or "gpu": what was used, never "auto"
    devices: tuple[str, ...]
    python_version: str = platform.python_version()

    def describe(self) -> str:
        return (f"backend {self.backend} {self.backend_version}, keras {self.keras_version}, "
                f"device {self.device} ({', '.join(self.devices)})")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "devices": list(self.devices)}


def choose_backend(name: str | None = None) -> str:
    """Set ``KERAS_BACKEND`` from ``name`` (or keep the environment's), refusing a switch.

    Raises ``InputError`` for an unsupported backend, or when Keras is already
    imported in this process with a different one.
    """
    requested = name or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if requested not in BACKENDS:
        raise InputError("backend", f"{requested!r} is not supported; choose one of {', '.join(BACKENDS)} "
                                    "(this project never uses PyTorch)")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != requested:
            raise InputError("backend", f"Keras is already imported with the {current} backend in this "
                                        f"process and cannot switch to {requested}; set "
                                        f"KERAS_BACKEND={requested} before Keras is imported, or start a new process")
    os.environ["KERAS_BACKEND"] = requested
    return requested


def start(backend: str | None = None, device: str = "auto") -> Runtime:
    """Choose the backend and device, import Keras, and describe what is in use.

    ``device`` is ``auto`` (a GPU when the backend sees one), ``cpu`` (hide
    every GPU from the backend) or ``gpu`` (an error when there is none).
    """
    if device not in DEVICES:
        raise InputError("device", f"{device!r} is not one of {', '.join(DEVICES)}")
    backend = choose_backend(backend)
    keras_loaded = "keras" in sys.modules
    # TensorFlow's C++ INFO/WARNING lines (oneDNN notices, missing CUDA) drown the progress bar.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device != "cpu":
        # Take GPU memory as needed instead of all of it up front, so that two
        # processes (a benchmark's backends, one after another) can share a GPU.
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        devices, used = (_start_jax if backend == "jax" else _start_tensorflow)(device, keras_loaded)
    except ImportError as err:
        raise InputError("backend", f"{backend} is not installed ({err}); "
                                    f"pip install 'mnist-multibackend'") from None
    import keras

    if keras.backend.backend() != backend:  # e.g. keras.json overrode the environment
        raise InputError("backend", f"Keras loaded the {keras.backend.backend()} backend, not {backend}")
    return Runtime(backend=backend, backend_version=_backend_version(backend),
                   keras_version=keras.__version__, device=used, devices=tuple(devices))


def _no_gpu(backend: str, seen) -> InputError:
    return InputError("--device gpu", f"the {backend} backend sees no GPU (it sees: {', '.join(seen) or 'nothing'}); "
                                      f"on a machine with an NVIDIA GPU install its CUDA build with "
                                      f"pip install 'mnist-multibackend[{GPU_EXTRAS[backend]}]'")


def _start_jax(device: str, keras_loaded: bool):
    if device == "cpu" and not keras_loaded:
        # Skip probing for CUDA/TPU plugins at all; later JAX calls then see only the CPU.
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if device == "cpu":
        return [str(d) for d in jax.devices("cpu")], "cpu"
    default = jax.devices()
    if default[0].platform == "gpu":
        return [str(d) for d in default], "gpu"
    if device == "gpu":
        raise _no_gpu("jax", [str(d) for d in default])
    return [str(d) for d in default], "cpu"


def _start_tensorflow(device: str, keras_loaded: bool):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise _no_gpu("tensorflow", [d.name for d in tf.config.list_physical_devices()])
    if gpus and device == "cpu" and not keras_loaded:
        # Must happen before TensorFlow creates its first tensor.
        tf.config.set_visible_devices([], "GPU")
    if gpus and device != "cpu":
        return [d.name for d in gpus], "gpu"
    return [d.name for d in tf.config.list_physical_devices("CPU")], "cpu"


def _backend_version(backend: str) -> str:
    if backend == "jax":
        import jax

        return jax.__version__
    import tensorflow as tf

    return tf.__version__


def make_deterministic(seed: int, backend: str) -> None:
    """Seed Python, NumPy and the backend, and make the backend's kernels deterministic.

    JAX on one device is deterministic already; TensorFlow needs op determinism
    for its reductions and data pipeline to repeat a run bit for bit.
    """
    import keras

    keras.utils.set_random_seed(seed)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def machine() -> dict:
    """The host, as recorded beside every measured figure."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # The load average says whether other work shared the cores during a measurement.
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(),
            "load_average_1min": round(os.getloadavg()[0], 2)}
