"""What decides this machine's speed, as ``mnist-mb doctor`` shows it.

``report()`` returns one dict: the CPU (model, the features that choose the
kernels, cores), each backend as a run of this project would have it (version,
TensorFlow's oneDNN state and threads, XLA flags, the GPUs it sees and why
none), and the last benchmark's answer for this machine (``bench.last_run``).
``format_report()`` turns it into the short page the command prints.

A process holds one Keras backend, and TensorFlow fixes oneDNN and its threads
when it is imported, so each backend is asked in a fresh worker process
(``python -m mnist_multibackend.doctor --probe BACKEND``, see ``bench.workers``)
that calls ``runtime.start`` exactly as ``mnist-mb`` does first. This process
never imports Keras; a backend that cannot start is a line of the report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import sys

from . import allocator, xla_cpu_flags
from .bench import last_run
from .bench.workers import answer_json, run_worker
from .errors import InputError
from .runtime import BACKENDS, GPU_EXTRAS, ONEDNN_ISA_VARIABLE, ONEDNN_VARIABLE, cpu_flags, machine, onednn_state, start

SCHEMA = 1
WORKER = "mnist_multibackend.doctor"
# The device each probe starts: TensorFlow as bench's CPU rows and time-to-accuracy run it (its physical GPUs
# are listed all the same); JAX as mnist-mb train's default, so that it looks for GPUs at all.
PROBE_DEVICE = {"tensorflow": "cpu", "jax": "auto"}
JAX_CUDA_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin")
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def report(backends=BACKENDS, echo: bool = False) -> dict:
    """Everything ``mnist-mb doctor`` shows, as one JSON-ready dict (``echo``: pass the probes' stderr through)."""
    here = machine()
    # The probes only start their backends: side by side they take the time of the slower one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(backends) or 1) as pool:
        probes = dict(zip(backends, pool.map(lambda backend: _run_probe(backend, echo), backends)))
    return {"schema": SCHEMA, "machine": _machine_facts(here), "backends": probes,
            "last_bench": last_run.read(here)}


def _machine_facts(here: dict) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))  # taskset, cgroups' cpusets: fewer than the machine has
    except AttributeError:  # not Linux
        usable = None
    return {"cpu": here["cpu"], "cpu_features": here["cpu_features"], "cpu_features_known": cpu_flags() is not None,
            "cores": here["cores"], "usable_cores": usable, "architecture": platform.machine(),
            "system": here["system"], "python": platform.python_version(),
            "malloc": allocator.policy(os.environ, allocator.libc_name()),
            "load_average_1min": here["load_average_1min"]}


def _run_probe(backend: str, echo: bool) -> dict:
    args = ["--probe", backend]
    if os.environ.get("JAX_PLATFORMS") is not None:  # the workers' environment drops it; a user's run keeps it
        args += ["--jax-platforms", os.environ["JAX_PLATFORMS"]]
    return run_worker(WORKER, args, label=f"doctor: {backend}", echo=echo)


# --------------------------------------------------------------------------- the probe (a worker process)

def probe(backend: str) -> dict:
    """This process's view of ``backend`` after ``runtime.start``: what a run of the project gets."""
    user_onednn = os.environ.get(ONEDNN_VARIABLE)  # before start(), which may choose it
    try:
        runtime = start(backend, PROBE_DEVICE[backend])
    except InputError as err:  # not installed, or it cannot start: a line of the report
        return {"status": "unavailable", "reason": str(err)}
    facts = {"status": "ok", "version": runtime.backend_version, "keras_version": runtime.keras_version,
             "device": runtime.device, "devices": list(runtime.devices),
             "xla_flags": shlex.split(os.environ.get("XLA_FLAGS", "")), "malloc": allocator.state(),
             "xla_cpu_convolutions": xla_cpu_flags.state()}
    facts.update(_tensorflow_facts(user_onednn) if backend == "tensorflow" else _jax_facts())
    if not facts["gpus"]:
        facts["why_no_gpu"] = _why_no_gpu(backend, facts)
    return facts


def _tensorflow_facts(user_onednn: str | None) -> dict:
    import tensorflow as tf

    state = onednn_state()
    chosen = state[ONEDNN_VARIABLE]
    return {
        "onednn": {"enabled": state["tensorflow_onednn"], ONEDNN_VARIABLE: chosen,
                   ONEDNN_ISA_VARIABLE: state[ONEDNN_ISA_VARIABLE],
                   # who chose: the user's environment, runtime.start, or nobody (TensorFlow's own default)
                   "set_by": "user" if user_onednn is not None else "mnist-mb" if chosen is not None else None},
        # 0: TensorFlow's default, one thread per usable core
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "thread_variables": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        "tf_xla_flags": shlex.split(os.environ.get("TF_XLA_FLAGS", "")),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "built_with_cuda": tf.test.is_built_with_cuda(),
    }


def _jax_facts() -> dict:
    import jax
    import jaxlib

    from . import jax_onednn
    from .jax_cpu import chosen_conv_forms

    devices = jax.devices()
    return {
        "jaxlib_version": jaxlib.__version__,
        "platforms": sorted({d.platform for d in devices}),
        "cuda_plugin": next((name for name in JAX_CUDA_PLUGINS if importlib.util.find_spec(name)), None),
        "pjrt_plugins": sorted(entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")),
        "jax_platforms": os.environ.get("JAX_PLATFORMS"),
        "gpus": [str(d) for d in devices if d.platform == "gpu"],
        "onednn": {"version": jax_onednn.version(), "library": str(jax_onednn.library_path() or "") or None,
                   "training_convolutions": list(chosen_conv_forms()["onednn_convs"]),
                   "conv1_kernels": jax_onednn.kernels(), ONEDNN_ISA_VARIABLE: os.environ.get(ONEDNN_ISA_VARIABLE)},
    }


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version line, or None when the machine has none (or it is not Linux)."""
    try:
        with open("/proc/driver/nvidia/version") as version:
            return version.readline().strip() or "present"
    except OSError:
        return None


def _why_no_gpu(backend: str, facts: dict) -> str:
    install = f"pip install 'mnist-multibackend[{GPU_EXTRAS[backend]}]'"
    if backend == "tensorflow" and not facts["built_with_cuda"]:
        return f"this TensorFlow is a CPU-only build ({install})"
    if backend == "jax":
        if facts["jax_platforms"] and not {"cuda", "gpu"} & set(facts["jax_platforms"].split(",")):
            return f"JAX_PLATFORMS={facts['jax_platforms']} leaves the GPUs out"
        if not facts["cuda_plugin"] and not any("cuda" in name for name in facts["pjrt_plugins"]):
            return f"no CUDA plugin installed, this jaxlib runs on the CPU only ({install})"
    built = "built with CUDA" if backend == "tensorflow" else f"{facts['cuda_plugin'] or 'a CUDA plugin'} installed"
    if nvidia_driver() is None:
        return f"{built}, but this machine has no NVIDIA driver (no GPU)"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None:
        return f"{built} and an NVIDIA driver present, but CUDA_VISIBLE_DEVICES={hidden!r}"
    return f"{built} and an NVIDIA driver present, but no usable GPU (CUDA libraries missing? {install}; " \
           "--verbose shows the backend's own messages)"


# --------------------------------------------------------------------------- the page

LABEL = 12  # the label column's width


def format_report(found: dict) -> str:
    """The short, aligned text page of ``report()``'s dict."""
    lines = ["mnist-mb doctor: what decides speed on this machine", ""]

    def row(label: str, text: str, indent: int = 0) -> None:
        lines.append(f"{' ' * indent}{label:<{LABEL - indent}} {text}")

    m = found["machine"]
    row("CPU", m["cpu"])
    row("features", _features_text(m))
    usable = m["usable_cores"]
    row("cores", f"{m['cores']}" + (f" ({usable} usable by this process)" if usable not in (None, m["cores"]) else "")
        + f", load average {m['load_average_1min']:.2f}")
    row("platform", f"{m['system']}, Python {m['python']}")
    row("malloc", _malloc_text(m["malloc"]))
    lines.append("")
    for backend, facts in found["backends"].items():
        if facts["status"] != "ok":
            row(backend, f"not usable: {facts['reason']}")
            continue
        extra = f"jaxlib {facts['jaxlib_version']}, " if backend == "jax" else ""
        row(backend, f"{facts['version']} ({extra}keras {facts['keras_version']})")
        if backend == "tensorflow":
            row("oneDNN", _onednn_text(facts["onednn"]), 2)
            row("threads", _threads_text(facts), 2)
        else:
            row("devices", ", ".join(facts["devices"]), 2)
            row("oneDNN", _jax_onednn_text(facts["onednn"]), 2)
        flags = facts["xla_flags"] + facts.get("tf_xla_flags", [])
        row("XLA flags", " ".join(flags) if flags else "none (XLA_FLAGS unset)", 2)
        if facts.get("xla_cpu_convolutions"):
            row("convolutions", _xla_convolutions_text(facts["xla_cpu_convolutions"]), 2)
        row("GPU", ", ".join(facts["gpus"]) if facts["gpus"] else f"none: {facts['why_no_gpu']}", 2)
    lines.append("")
    last = found["last_bench"]
    row("last bench", last["message"])
    if last["status"] == "this machine":
        for mode, label in (("train", "training"), ("infer", "inference")):
            best = last["fastest"].get(mode)
            replicas = best.get("replicas", 1) if best else 1
            row(label, "not measured" if best is None else
                f"{best['backend']} on {best['device']}" + (f" x{replicas}" if replicas > 1 else "")
                + f", batch {best['batch_size']}: {best['images_per_second']:,.0f} images/s", 2)
        side = last.get("side_by_side")  # absent from summaries written before it existed
        if side:
            for mode, label in (("train", "training"), ("infer", "inference")):
                ratios = ", ".join(f"{r['ratio']:.2f} at batch {r['batch_size']}" for r in side["ratios"][mode])
                row("side by side", f"{side['other']} ÷ {side['base']}, {label}: {ratios}", 2)
    return "\n".join(lines)


def _features_text(m: dict) -> str:
    if not m["cpu_features_known"]:
        return f"unknown (no x86 flags in /proc/cpuinfo; {m['architecture']})"
    have = ", ".join(m["cpu_features"]) or "none of note"
    missing = [name for name, prefix in (("AVX-512", "avx512"), ("AMX", "amx"))
               if not any(f.startswith(prefix) for f in m["cpu_features"])]
    return have + (f" (no {', no '.join(missing)})" if missing else "")


def _malloc_text(policy: str) -> str:
    if policy == "keep":
        return "glibc's; JAX runs keep freed memory for the next step (set by mnist-mb; MALLOC_* variables override)"
    return f"left as it is: {policy}"


def _xla_convolutions_text(decision: str) -> str:
    if decision == "set":
        return "off YNNPACK's single-convolution path (set by mnist-mb; XLA_FLAGS overrides)"
    return f"XLA_FLAGS left as it is: {decision}"


def _jax_onednn_text(onednn: dict) -> str:
    if onednn["version"] is None:
        return "not installed: XLA computes the convolutions (pip install onednn-cpu-gomp)"
    convs = onednn["training_convolutions"]
    if not convs:
        return f"{onednn['version']}, not used on this CPU: XLA computes the convolutions"
    text = f"{onednn['version']}: {', '.join(convs)} in training, all three passes (jax_onednn)"
    kernels = onednn.get("conv1_kernels")
    if kernels:  # the kernels this CPU gets (AVX2's weight gradients ran at 0.73-0.76x AVX-512's on one CPU)
        isa = onednn.get(ONEDNN_ISA_VARIABLE)
        held = f", held to {isa} by {ONEDNN_ISA_VARIABLE}" if isa else ""
        text += f"; conv1's kernels {', '.join(dict.fromkeys(kernels.values()))}{held}"
    return text


def _onednn_text(onednn: dict) -> str:
    state = {True: "on", False: "off", None: "unknown"}[onednn["enabled"]]
    value = onednn[ONEDNN_VARIABLE]
    isa = onednn.get(ONEDNN_ISA_VARIABLE)  # oneDNN's kernels held below what the CPU has
    held = f"; kernels held to {isa} by {ONEDNN_ISA_VARIABLE}" if isa and onednn["enabled"] else ""
    if onednn["set_by"] is None:
        return f"{state} ({ONEDNN_VARIABLE} unset: TensorFlow's default for this CPU){held}"
    who = "by you" if onednn["set_by"] == "user" else "by mnist-mb"
    return f"{state} ({ONEDNN_VARIABLE}={value}, set {who}){held}"


def _threads_text(facts: dict) -> str:
    intra, inter = facts["intra_op_threads"], facts["inter_op_threads"]
    text = f"intra-op {intra}, inter-op {inter}"
    if not intra and not inter:
        text = f"TensorFlow's default, one per usable core ({text})"
    variables = ", ".join(f"{k}={v}" for k, v in facts["thread_variables"].items())
    return text + (f"; {variables}" if variables else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER}")
    parser.add_argument("--probe", choices=BACKENDS, required=True)
    parser.add_argument("--jax-platforms", help="the user's JAX_PLATFORMS, which the workers' environment drops")
    args = parser.parse_args(argv)
    if args.jax_platforms is not None:
        os.environ["JAX_PLATFORMS"] = args.jax_platforms
    return answer_json(lambda: probe(args.probe))


if __name__ == "__main__":
    sys.exit(main())
