"""The throughput matrix: every backend and device in its own fresh process, then the data path, then the report.

``run_benchmarks(BenchConfig(...))`` is what ``mnist-mb bench`` calls. The
workers (``python -m mnist_multibackend.bench.throughput``) run one after
another, never at the same time, so that they do not compete for the cores.
With two backends, ``side_by_side`` then compares them on the CPU with their
windows alternated in time. The data path runs last, in this process, which
never imports Keras. A worker that fails is an error row (see ``workers``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path

from mnist_multibackend import data
from mnist_multibackend.errors import InputError, require_at_least
from mnist_multibackend.runtime import BACKENDS, results_machine

from . import datapath, last_run, report, side_by_side
from .throughput import unavailable_row
from .workers import run_worker

DEVICES = ("cpu", "gpu")
# Full: the matrix docs/performance.md shows. Quick: the same schema in about 90 s (the test suite runs it).
# Replica counts on the CPU: 2 logical devices share the same cores, so their efficiency shows
# the data-parallel engine's overhead, not a speed-up; on GPUs, every visible GPU is added.
MAX_BATCH_SIZE = 60_000  # MNIST's training images: a window of one step uses a batch of them
FULL = {"batch_sizes": (32, 128, 512), "windows": 5, "window_seconds": 1.5, "datapath_images": None,
        "datapath_repeats": 3, "cpu_replicas": (2,)}
QUICK = {"batch_sizes": (128,), "windows": 5, "window_seconds": 0.25, "datapath_images": 2000,
         "datapath_repeats": 1, "cpu_replicas": ()}


@dataclasses.dataclass
class BenchConfig:
    out: str = "runs/bench"
    quick: bool = False
    data: str | None = None  # see data.load_dataset
    backends: tuple[str, ...] = BACKENDS
    devices: tuple[str, ...] = DEVICES
    batch_sizes: tuple[int, ...] | None = None  # None: FULL's or QUICK's

    def __post_init__(self):
        for batch_size in self.batch_sizes or ():
            require_at_least("--batch-sizes", batch_size)
            if batch_size > MAX_BATCH_SIZE:  # 10**9 started a worker that asked for 34 GB
                raise InputError("--batch-sizes", f"at most {MAX_BATCH_SIZE:,} (the training images a window "
                                                  f"measures on). Received: {batch_size:,}")

    def settings(self) -> dict:
        settings = dict(QUICK if self.quick else FULL)
        if self.batch_sizes:
            settings["batch_sizes"] = tuple(self.batch_sizes)
        return settings

    def command(self) -> str:
        words = ["mnist-mb", "bench", *(["--quick"] if self.quick else []), "--out", self.out]
        if self.batch_sizes:
            words += ["--batch-sizes", ",".join(map(str, self.batch_sizes))]
        if tuple(self.backends) != BACKENDS:
            words += ["--backends", ",".join(self.backends)]
        return " ".join(words)


def run_benchmarks(config: BenchConfig) -> dict:
    """Measure everything, write ``results.json``, ``results.md`` and ``results.png`` into ``config.out``."""
    settings = config.settings()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    workers = []
    for backend in config.backends:
        for device in config.devices:
            single = throughput_worker(backend, device, settings, config.data)
            workers.append(single)
            if single["status"] != "ok":
                continue
            counts = settings["cpu_replicas"] if device == "cpu" else [len(single["runtime"]["devices"])]
            workers += [throughput_worker(backend, device, settings, config.data, replicas=n)
                        for n in counts if n > 1]

    side = None
    if len(config.backends) == 2 and all(w["status"] == "ok" for w in workers
                                         if w["device"] == "cpu" and w["replicas"] == 1):
        _log("the backends side by side on the CPU: both workers alive, windows alternated")
        side = side_by_side.measure(tuple(config.backends), tuple(settings["batch_sizes"]), settings["windows"],
                                    settings["window_seconds"], config.data)

    _log("data path: IDX -> CSV and CSV loading")
    dataset = data.load_dataset(config.data, download=False)  # a worker has downloaded it if it had to
    data_path = datapath.measure(dataset, settings["datapath_images"], settings["datapath_repeats"])
    _log(f"data path: conversion {data_path['convert_speedup']:.1f}x faster than the original loop, "
         f"both splits in {data_path['convert_both_splits_seconds']:.2f} s")

    measured = [w for w in workers if w["status"] == "ok"]
    # The device's peak comes from the one-device workers: a worker that split the CPU into logical
    # devices runs its matmul on one of them.
    peaks = [{"backend": w["backend"], "device": w["device"], "gflops": w["peak"]["gflops"],
              "median_gflops": w["peak"]["median_gflops"], "size": w["peak"]["size"]} for w in measured
             if w["replicas"] == 1]
    results = {
        "schema": 1,
        "command": config.command(),
        "quick": config.quick,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "load_average_before": load_before,
        "machine": _machine(workers),
        "data": measured[0]["data"] if measured else dataset.source,
        "flops_per_image": measured[0]["flops_per_image"] if measured else None,
        "windows": settings["windows"],
        "window_seconds": settings["window_seconds"],
        "peaks": peaks,
        "rows": scaling_efficiency(against_device_peak([row for w in workers for row in w["rows"]], peaks)),
        "side_by_side": side,
        "data_path": data_path,
    }
    report.write_all(results, Path(config.out))
    # For mnist-mb doctor: which backend this machine runs fastest, without the results folder at hand.
    # A run that measured nothing has no answer to replace the last one with.
    if measured and last_run.record(results, config.out) is None:
        _log(f"could not write {last_run.cache_path()}: mnist-mb doctor will not know this run")
    return results


def against_device_peak(rows: list[dict], peaks: list[dict]) -> list[dict]:
    """Set each measured row's ``peak_gflops`` and ``pct_of_peak`` against its device's peak.

    The device's peak is the best matmul rate any backend reached on it: the
    hardware's practical limit, whichever library gets there (on this kind of
    CPU, XLA's matmul is slower than TensorFlow's).
    """
    best = {}
    for p in peaks:
        best[p["device"]] = max(best.get(p["device"], 0.0), p["gflops"])
    for row in rows:
        if row["status"] == "ok":
            row["peak_gflops"] = best[row["device"]]
            row["pct_of_peak"] = 100 * row["gflops"] / best[row["device"]]
    return rows


def scaling_efficiency(rows: list[dict]) -> list[dict]:
    """Set ``speedup`` and ``scaling_efficiency`` (speed-up over the replica count) on data-parallel rows,
    against the one-device Keras training row of the same backend, device and global batch."""
    single = {(r["backend"], r["device"], r["batch_size"]): r["images_per_second"] for r in rows
              if r["status"] == "ok" and r["replicas"] == 1 and r["impl"] == "keras" and r["mode"] == "train"}
    for row in rows:
        base = single.get((row["backend"], row["device"], row["batch_size"]))
        if row["status"] == "ok" and row["replicas"] > 1 and base:
            row["speedup"] = row["images_per_second"] / base
            row["scaling_efficiency"] = row["speedup"] / row["replicas"]
    return rows


def throughput_worker(backend: str, device: str, settings: dict, data_path: str | None, replicas: int = 1) -> dict:
    """One ``throughput`` worker's answer; if it failed, the error and one error row for its part of the matrix."""
    args = ["--backend", backend, "--device", device, "--batch-sizes", ",".join(map(str, settings["batch_sizes"])),
            "--windows", settings["windows"], "--window-seconds", settings["window_seconds"], "--replicas", replicas]
    args += ["--data", data_path] if data_path else []
    where = f"{backend} on {device}" + (f" x{replicas}" if replicas > 1 else "")
    _log(f"{where}: starting a fresh process")
    answer = run_worker("mnist_multibackend.bench.throughput", args, label=f"bench: {where}")
    if answer["status"] != "error":
        return answer
    target = {"backend": backend, "device": device, "replicas": replicas, **answer}
    return {**target, "rows": [unavailable_row(**target)]}


def _machine(workers: list[dict]) -> dict:
    hosts = [w["machine"] for w in workers if w.get("machine")]
    host = results_machine(hosts)
    host["gpu"] = next((h.get("gpu") for h in hosts if h.get("gpu")), None)
    versions = {}
    for h in hosts:
        versions.update(h.get("versions", {}))
    host["versions"] = versions
    return host


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
