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
import re
import shlex
import socket
import sys
from pathlib import Path

from . import xla_cpu_flags
from .allocator import keep_freed_memory
from .allocator import state as allocator_state
from .errors import InputError, first_line, require_at_least

BACKENDS = ("tensorflow", "jax")
DEVICES = ("auto", "cpu", "gpu")
DEFAULT_BACKEND = "tensorflow"  # Keras's own default
# Logical CPU devices for data-parallel training without accelerators (--cpu-devices): they share the
# host's cores, so more than a few show the engine, not more speed.
MAX_CPU_DEVICES = 256
# The pyproject extra that brings each backend's CUDA build.
GPU_EXTRAS = {"tensorflow": "tensorflow-gpu", "jax": "jax-gpu"}


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-process JAX run (``jax.distributed.initialize``).

    TensorFlow describes its cluster in the ``TF_CONFIG`` environment variable instead.
    """

    coordinator: str  # HOST:PORT where process 0 serves the coordination service
    num_processes: int
    process_id: int  # 0 .. num_processes - 1

    def check(self) -> None:
        host, _, port = self.coordinator.rpartition(":")
        # ASCII digits only: str.isdigit() takes "١٢٣٤", which crashed JAX's C++ side, as did 2**64 + 1
        if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
            raise InputError("--coordinator", f"expected HOST:PORT, a port from 1 to 65535. "
                                              f"Received: {self.coordinator!r}")
        try:  # a name that does not resolve left the process waiting for JAX's time-out, silently
            socket.getaddrinfo(host.strip("[]"), int(port))
        except (OSError, UnicodeError) as err:
            raise InputError("--coordinator", f"host {host!r} does not resolve ({err})") from None
        require_at_least("--num-processes", self.num_processes)
        if not 0 <= self.process_id < self.num_processes:
            raise InputError("--process-id", f"must be in 0..{self.num_processes - 1}. Received: {self.process_id}")


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
        devices = self.devices if len(self.devices) <= 4 else \
            (self.devices[0], "...", f"{self.devices[-1]}: {len(self.devices)} devices")
        return (f"backend {self.backend} {self.backend_version}, keras {self.keras_version}, "
                f"device {self.device} ({', '.join(devices)})")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "devices": list(self.devices)}


def choose_backend(name: str | None = None) -> str:
    """Set ``KERAS_BACKEND`` from ``name`` (or keep the environment's), refusing a switch.

    Raises ``InputError`` for an unsupported backend, or when Keras is already
    imported in this process with a different one.
    """
    requested = name or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if requested not in BACKENDS:
        where = "--backend" if name else "KERAS_BACKEND"  # the setting the user has to change
        raise InputError(where, f"{requested!r} is not supported; choose one of {', '.join(BACKENDS)} "
                                "(this project never uses PyTorch)")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != requested:
            raise InputError("backend", f"Keras is already imported with the {current} backend in this "
                                        f"process and cannot switch to {requested}; set "
                                        f"KERAS_BACKEND={requested} before Keras is imported, or start a new process")
    os.environ["KERAS_BACKEND"] = requested
    return requested


def start(backend: str | None = None, device: str = "auto", cpu_devices: int | None = None,
          cluster: Cluster | None = None) -> Runtime:
    """Choose the backend and device, import Keras, and describe what is in use.

    ``device`` is ``auto`` (a GPU when the backend sees one), ``cpu`` (hide
    every GPU from the backend) or ``gpu`` (an error when there is none).
    ``cpu_devices`` splits the host CPU into that many logical devices (and
    implies ``cpu``), so that data-parallel training runs without accelerators. ``cluster`` joins a
    multi-process JAX run. Both must be settled before the backend initialises,
    which is why they are arguments here.
    """
    if device not in DEVICES:
        raise InputError("device", f"{device!r} is not one of {', '.join(DEVICES)}")
    if cpu_devices is not None:
        require_at_least("--cpu-devices", cpu_devices)
        if cpu_devices > MAX_CPU_DEVICES:  # 100,000 never finished starting, past 7 GB
            raise InputError("--cpu-devices", f"at most {MAX_CPU_DEVICES} logical devices (each a replica of the "
                                              f"model on the same cores). Received: {cpu_devices}")
        if device == "gpu":
            raise InputError("--cpu-devices", "splits the host CPU into logical devices; it cannot be used "
                                              "with --device gpu")
        device = "cpu"
    backend = choose_backend(backend)
    if cluster is not None:
        cluster.check()
        if backend != "jax":
            raise InputError("--coordinator", f"the {backend} backend reads its cluster from TF_CONFIG, not from "
                                              "--coordinator/--num-processes/--process-id (see docs/gpu-and-distributed.md)")
    keras_loaded = "keras" in sys.modules
    # TensorFlow's C++ INFO/WARNING lines (oneDNN notices, missing CUDA) drown the progress bar.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Read by TensorFlow when it loads, in a JAX process too (Keras imports it to save files).
    os.environ.update(tensorflow_cpu_settings(cpu_features(), os.environ))
    if backend == "jax":  # before JAX starts the threads that allocate; TensorFlow was not measured faster with it
        keep_freed_memory()
        xla_cpu_flags.apply()  # before XLA reads XLA_FLAGS, which it does once, as JAX starts
    if device != "cpu":
        # Take GPU memory as needed instead of all of it up front (TensorFlow
        # maps nearly all of it, JAX 75 %), so that processes run one after
        # another or side by side (a benchmark's backends; the TensorFlow that
        # Keras imports inside a JAX process) can share a GPU. Both are read
        # when the backend first touches the GPU; a user's own setting wins.
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if not keras_loaded:
        _check_keras_json()
    try:
        if backend == "jax":
            devices, used = _start_jax(device, keras_loaded, cpu_devices, cluster)
        else:
            devices, used = _start_tensorflow(device, cpu_devices)
        import keras  # (already, where the backend's start needed it) reads keras.json
    except ImportError as err:
        raise InputError("backend", f"{backend} is not installed ({err}); "
                                    f"pip install 'mnist-multibackend'") from None
    except (ValueError, TypeError, AttributeError, AssertionError) as err:
        # Keras (and TensorFlow's own Keras, as TensorFlow loads) refused its settings file: a list, an epsilon
        # that is not a float, a floatx it does not know
        if "keras" not in sys.modules and os.path.exists(_keras_json()):
            raise InputError(_keras_json(), f"Keras refuses its settings ({first_line(err, limit=200)})") from None
        raise
    except RuntimeError as err:
        if backend == "jax" and os.environ.get("JAX_PLATFORMS"):  # a platform JAX does not have here
            raise InputError("JAX_PLATFORMS", f"{os.environ['JAX_PLATFORMS']!r}: {first_line(err, limit=300)}") \
                from None
        raise
    if keras.backend.backend() != backend:  # e.g. keras.json overrode the environment
        raise InputError("backend", f"Keras loaded the {keras.backend.backend()} backend, not {backend}")
    overridden = pin_keras_config()
    if overridden:
        print(f"mnist-mb: overriding Keras settings for this run: {'; '.join(overridden)} (from {_keras_json()} or "
              "the environment; the model is defined for float32, channels_last and full runs)",
              file=sys.stderr, flush=True)
    if keras.config.epsilon() != DEFAULT_EPSILON:  # kept (it is the user's to choose), but never silently
        print(f"mnist-mb: Keras epsilon is {keras.config.epsilon()} (from {_keras_json()}), not {DEFAULT_EPSILON}: "
              "losses differ slightly; recorded in metrics.json", file=sys.stderr, flush=True)
    return Runtime(backend=backend, backend_version=_backend_version(backend),
                   keras_version=keras.__version__, device=used, devices=tuple(devices))


# What the model and its recipes are defined for. A keras.json with floatx float16 (or channels_first)
# would silently change every result; KERAS_MAX_EPOCHS / KERAS_MAX_STEPS_PER_EPOCH would cut runs short.
PINNED_CONFIG = {"floatx": "float32", "image_data_format": "channels_last"}
DEFAULT_EPSILON = 1e-7


def pin_keras_config() -> list[str]:
    """Set Keras's global settings to ``PINNED_CONFIG`` (and no epoch/step caps); what was changed, as phrases."""
    import keras

    changed = []
    for name, wanted in PINNED_CONFIG.items():
        current = getattr(keras.config, name)()
        if current != wanted:
            getattr(keras.config, f"set_{name}")(wanted)
            changed.append(f"{name} {current} -> {wanted}")
    for name in ("max_epochs", "max_steps_per_epoch"):
        getter = getattr(keras.config, name, None)
        if getter is not None and getter() is not None:
            changed.append(f"{name} {getter()} -> none (KERAS_{name.upper()} ignored)")
            getattr(keras.config, f"set_{name}")(None)
    return changed


def keras_config() -> dict:
    """Keras's global settings in force: recorded in metrics.json beside the numbers they shape."""
    import keras

    return {"backend": keras.backend.backend(), "floatx": keras.config.floatx(),
            "image_data_format": keras.config.image_data_format(), "epsilon": keras.config.epsilon()}


def _keras_json() -> str:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "keras.json")


def _check_keras_json() -> None:
    """Keras reads keras.json as it is imported, with a plain open(): a FIFO there would block the import
    for ever and /dev/zero fill the memory. Only a small regular file is left for it to read."""
    path = Path(_keras_json())
    if path.exists() or path.is_symlink():
        from .runs import read_record

        read_record(path, limit=64 * 2**10)  # a keras.json holds five settings


def _no_gpu(backend: str, seen) -> InputError:
    return InputError("--device gpu", f"the {backend} backend sees no GPU (it sees: {', '.join(seen) or 'nothing'}); "
                                      f"on a machine with an NVIDIA GPU install its CUDA build with "
                                      f"pip install 'mnist-multibackend[{GPU_EXTRAS[backend]}]'")


def _start_jax(device: str, keras_loaded: bool, cpu_devices: int | None, cluster: Cluster | None):
    if device == "cpu" and not keras_loaded:
        # Skip probing for CUDA/TPU plugins at all; later JAX calls then see only the CPU.
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if cpu_devices is not None:
        try:
            jax.config.update("jax_num_cpu_devices", cpu_devices)
        except RuntimeError:  # JAX already initialised in this process
            if jax.local_device_count("cpu") != cpu_devices:
                raise InputError("--cpu-devices", f"JAX is already running with {jax.local_device_count('cpu')} "
                                                  f"CPU device(s) in this process; start a new process") from None
    if cluster is not None:
        import keras

        try:
            # Keras's wrapper of jax.distributed.initialize also agrees on one
            # random seed across processes, so replicas start from the same weights.
            keras.distribution.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id)
        except RuntimeError as err:
            raise InputError("--coordinator", f"cannot join the JAX cluster ({first_line(err)})") from None
    # Local devices: in a multi-process run the others belong to other processes.
    if device == "cpu":
        cpus = jax.local_devices(backend="cpu")
        if jax.default_backend() != "cpu":  # JAX_PLATFORMS came too late: JAX was already running on a GPU
            jax.config.update("jax_default_device", cpus[0])
        return [str(d) for d in cpus], "cpu"
    default = jax.local_devices()
    if default[0].platform == "gpu":
        return [str(d) for d in default], "gpu"
    if device == "gpu":
        raise _no_gpu("jax", [str(d) for d in default])
    return [str(d) for d in default], "cpu"


def _start_tensorflow(device: str, cpu_devices: int | None):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise _no_gpu("tensorflow", [d.name for d in tf.config.list_physical_devices()])
    if gpus and device == "cpu" and tf.config.get_visible_devices("GPU"):
        try:  # possible only before TensorFlow creates its first tensor
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            raise InputError("--device cpu", "TensorFlow is already running on the GPU in this process; "
                                             "start a new process") from None
    if gpus and device != "cpu":
        return [d.name for d in gpus], "gpu"
    if cpu_devices is None:
        return [d.name for d in tf.config.list_physical_devices("CPU")], "cpu"
    host = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(host, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    except RuntimeError:  # TensorFlow's context already initialised in this process
        configured = len(tf.config.get_logical_device_configuration(host) or [None])
        if configured != cpu_devices:
            raise InputError("--cpu-devices", f"TensorFlow is already running with {configured} CPU device(s) "
                                              f"in this process; start a new process") from None
    # Named without listing the logical devices: that would initialise TensorFlow's
    # context, after which a MultiWorkerMirroredStrategy can no longer be created.
    return [f"/device:CPU:{i}" for i in range(cpu_devices)], "cpu"


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


# The CPU features that decide which kernels the backends run: TensorFlow turns its oneDNN kernels
# on by default only with AVX-512 VNNI/BF16 or AMX, and measured speeds differ 3-4x between hosts.
# Named as Linux's /proc/cpuinfo names them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
                "amx_tile", "amx_bf16", "amx_int8")


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo") as info:
            return info.read()
    except OSError:  # not Linux, or a sandbox without /proc
        return None


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """Every flag of the CPU's ``flags`` line in ``/proc/cpuinfo``; None where there is none (not an x86 CPU
    (ARM lists ``Features`` instead), or no ``/proc/cpuinfo``): its features are then unknown."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    lines = (cpuinfo or "").splitlines()
    return next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None)


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """Which of ``CPU_FEATURES`` this CPU has (from ``/proc/cpuinfo``; empty where it cannot be read)."""
    flags = cpu_flags(cpuinfo) or []
    return [feature for feature in CPU_FEATURES if feature in flags]


ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# oneDNN's own limit on the instructions its kernels use (AVX2 kernels on an AVX-512 CPU): recorded when set,
# since it changes every TensorFlow figure while the CPU's features stay the same.
ONEDNN_ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"


def tensorflow_cpu_settings(features: list[str], environ) -> dict[str, str]:
    """The environment TensorFlow should load with on a CPU with ``features``, where ``environ`` leaves it open.

    oneDNN on wherever the CPU has AVX2 and the user has not chosen (``TF_ENABLE_ONEDNN_OPTS``).
    TensorFlow turns it on by itself only with AVX-512 VNNI/BF16 or AMX; on the AVX-512 host
    turning it off halved training (937 against 1,874 images/s), and on an AVX2-only host, where
    it is off by default, turning it on doubled it (docs/performance.md, "Choices per CPU").
    Older x86 CPUs and other architectures keep TensorFlow's own default: not measured.
    """
    if ONEDNN_VARIABLE in environ or "avx2" not in features:
        return {}
    return {ONEDNN_VARIABLE: "1"}


def onednn_state() -> dict:
    """TensorFlow's oneDNN kernels in this process, and the variable that turns them on or off.

    ``tensorflow_onednn`` is True or False as TensorFlow decided when it was imported, or None when
    TensorFlow computes nothing here: not loaded (a JAX process; importing it only to ask would cost
    seconds and memory), or loaded by Keras on the JAX backend only to write a saved model.
    """
    enabled = None
    keras = sys.modules.get("keras")
    if "tensorflow" in sys.modules and (keras is None or keras.backend.backend() == "tensorflow"):
        from .keras_private import KerasPrivateError, tensorflow_onednn_enabled

        try:
            enabled = tensorflow_onednn_enabled()
        except KerasPrivateError:  # a TensorFlow without the name: record "unknown" rather than lose a run's
            pass  # results; tests/test_keras_private.py fails on it
    return {"tensorflow_onednn": enabled, ONEDNN_VARIABLE: os.environ.get(ONEDNN_VARIABLE),
            ONEDNN_ISA_VARIABLE: os.environ.get(ONEDNN_ISA_VARIABLE)}


def onednn_phrase(host: dict) -> str | None:
    """``TensorFlow oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)``; None when the record has no TensorFlow state."""
    enabled = host.get("tensorflow_onednn")
    if enabled is None:
        return None
    setting, isa = host.get(ONEDNN_VARIABLE), host.get(ONEDNN_ISA_VARIABLE)
    return f"TensorFlow oneDNN {'on' if enabled else 'off'}" + \
        (f" ({ONEDNN_VARIABLE}={setting}" if setting is not None else f" ({ONEDNN_VARIABLE} unset") + \
        (f", {ONEDNN_ISA_VARIABLE}={isa})" if enabled and isa else ")")


def cpu_line(host: dict) -> str:
    """``AMD EPYC (features: avx2, fma), 2 cores, TensorFlow oneDNN off (TF_ENABLE_ONEDNN_OPTS unset)``:
    how results files name the machine (the oneDNN part only where TensorFlow ran)."""
    features = host.get("cpu_features")
    named = ", ".join(features) if features else "not recorded" if features is None else "none of note"
    onednn = onednn_phrase(host)
    malloc = host.get("malloc")  # None: recorded before the choice existed, or no backend started
    malloc = None if malloc is None else "malloc keeps freed memory" if malloc == "kept" else f"malloc as is ({malloc})"
    xla = host.get("xla_cpu_convolutions")  # None: recorded before the choice existed, or no JAX started
    xla = None if xla is None else "XLA convolutions off YNNPACK" if xla["in_force"] else "XLA convolutions on YNNPACK"
    jax_onednn = host.get("jax_onednn")  # None: not used, or recorded before it existed
    isa = host.get(ONEDNN_ISA_VARIABLE)  # the same variable holds back this oneDNN's kernels too
    jax_onednn = jax_onednn and f"JAX convolutions by oneDNN {jax_onednn}" + \
        (f" ({ONEDNN_ISA_VARIABLE}={isa})" if isa else "")
    users_xla = host.get("xla_flags")  # the user's own XLA_FLAGS in the JAX process; None: not recorded
    users_xla = users_xla and "XLA_FLAGS=" + shlex.join(users_xla)
    return f"{host.get('cpu')} (features: {named}), {host.get('cores')} cores" + \
        "".join(f", {part}" for part in (onednn, malloc, xla, users_xla, jax_onednn) if part)


def machine() -> dict:
    """The host, as recorded beside every measured figure; with TensorFlow's oneDNN state in this process."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = _read_cpuinfo()
    cpu = next((line.split(":", 1)[1].strip() for line in (cpuinfo or "").splitlines()
                if line.startswith("model name")), cpu)
    decision = xla_cpu_flags.state()
    xla = None if decision is None else {"decision": decision, "in_force": xla_cpu_flags.in_force()}
    # The load average says whether other work shared the cores during a measurement.
    return {"cpu": cpu, "cpu_features": cpu_features(cpuinfo or ""), **onednn_state(), "malloc": allocator_state(),
            "xla_cpu_convolutions": xla, "xla_flags": None if decision is None else xla_cpu_flags.users_flags(),
            "jax_onednn": None if decision is None else jax_onednn_in_training(),
            "cores": os.cpu_count(),
            "system": platform.platform(), "load_average_1min": round(os.getloadavg()[0], 2)}


def jax_onednn_in_training() -> str | None:
    """oneDNN's version where JAX's training on this CPU computes its convolutions with it
    (``jax_cpu.conv_forms``); None where it does not. Call only in a process that started JAX."""
    from .jax_cpu import chosen_conv_forms
    from .jax_onednn import version

    return version() if chosen_conv_forms()["onednn_convs"] else None


def results_machine(hosts: list[dict]) -> dict:
    """The machine of a results file, from its workers' records (``hosts``, without load averages):
    the first one's, with TensorFlow's oneDNN state from a worker that loaded TensorFlow, and JAX's
    settings (malloc, XLA's convolutions, the user's XLA flags, oneDNN) from a worker that started JAX."""
    if not hosts:
        return {k: v for k, v in machine().items() if k != "load_average_1min"}
    host = dict(hosts[0])
    tensorflow = next((h for h in hosts if h.get("tensorflow_onednn") is not None), None)
    if tensorflow is not None:
        host.update({key: tensorflow.get(key) for key in ("tensorflow_onednn", ONEDNN_VARIABLE, ONEDNN_ISA_VARIABLE)})
    jax = next((h for h in hosts if h.get("xla_cpu_convolutions") is not None), None)
    if jax is not None:
        host.update({key: jax.get(key) for key in ("malloc", "xla_cpu_convolutions", "xla_flags", "jax_onednn")})
    return host
