"""Benchmarks: the model's FLOP count, the raw references, the data path, and `mnist-mb bench --quick`.

These tests check what the benchmark computes and the shape of what it writes,
never how fast anything ran.
"""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import BACKEND, assert_clean_error, cli
from mnist_multibackend import data
from mnist_multibackend.bench import datapath, flops, last_run
from mnist_multibackend.bench.core import batches, spec_from_keras
from mnist_multibackend.model import build_model, compile_model
from mnist_multibackend.runtime import BACKENDS, cpu_features

ROW_KEYS = {"backend", "device", "replicas", "batch_size", "mode", "impl", "status", "images_per_second",
            "gflops", "pct_of_peak", "compile_seconds", "load_average_1min"}


def test_flops_are_counted_from_the_layer_shapes():
    cost = flops.flops_per_image(build_model())
    # conv0..conv3 and the two dense layers, 2 FLOPs per multiply-add
    assert cost["layers"] == {"conv0": 2 * 26 * 26 * 9 * 1 * 32, "conv1": 2 * 24 * 24 * 9 * 32 * 32,
                              "conv2": 2 * 10 * 10 * 9 * 32 * 64, "conv3": 2 * 8 * 8 * 9 * 64 * 64,
                              "fc1": 2 * 1024 * 256, "fco": 2 * 256 * 10}
    assert cost["forward"] == 2 * 9_970_304 and cost["train"] == 3 * cost["forward"]


def _raw_reference(spec):
    if BACKEND == "jax":
        from mnist_multibackend.bench.raw_jax import RawJax

        return RawJax(spec)
    from mnist_multibackend.bench.raw_tf import RawTensorFlow

    return RawTensorFlow(spec)


def test_raw_reference_predicts_and_learns_as_keras_does(mnist):
    model = compile_model(build_model())
    labels = mnist.y_train[:64]
    x, y = data.as_model_input(mnist.x_train[:64]), data.one_hot(labels)
    raw = _raw_reference(spec_from_keras(model))
    pairs = raw.to_device(batches(x, y, 32, 2))
    np.testing.assert_allclose(np.concatenate(raw.predict(pairs)), model.predict(x, verbose=0), atol=1e-5)

    def loss(probabilities):
        return -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))

    before = loss(model.predict(x, verbose=0))
    for _ in range(5):  # ten steps of batch 32 from the same weights, each way
        raw.train(pairs)
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    raw_after, keras_after = loss(np.concatenate(raw.predict(pairs))), loss(model.predict(x, verbose=0))
    assert raw_after < before - 0.05 and keras_after < before - 0.05
    # Only the dropout masks differ between the two: the losses move together.
    assert abs(raw_after - keras_after) < 0.05, (before, raw_after, keras_after)


def _raw_moving_statistics(raw) -> dict[str, np.ndarray]:
    moving = raw.moving if BACKEND == "tensorflow" else raw._state[1]
    return {name: np.asarray(value) for name, value in moving.items()}


def test_raw_reference_keeps_kerass_moving_statistics(mnist):
    """One training step from the same weights on the same batch: the batch norms' moving statistics (which
    dropout, the only random part, cannot reach) are Keras's, in whichever batch-norm form each trains."""
    from mnist_multibackend.training import speed_up

    model = compile_model(build_model())
    raw = _raw_reference(spec_from_keras(model))
    speed_up(model)  # the forms train() gives the model on this machine (TensorFlow/CPU: the fused batch norm)
    x, y = data.as_model_input(mnist.x_train[:96]), data.one_hot(mnist.y_train[:96])
    raw.train(raw.to_device([(x, y)]))
    model.train_on_batch(x, y)
    moving = _raw_moving_statistics(raw)
    assert len(moving) == 8
    momentum = model.get_layer("bn0").momentum
    for name, value in moving.items():
        layer, weight = name.split("/")
        start = 0.0 if weight == "moving_mean" else 1.0  # Keras's initial moving statistics
        expected = keras.ops.convert_to_numpy(getattr(model.get_layer(layer), weight))

        def batch_statistic(moving_value):  # what the step folded in: sharper than the moving value itself
            return (moving_value - momentum * start) / (1 - momentum)

        assert not np.allclose(expected, start)  # the step moved them
        # bn3 sees 96 x 8 x 8 values per channel: a variance with Bessel's correction would be 1.6e-4 off.
        np.testing.assert_allclose(batch_statistic(value), batch_statistic(expected), rtol=5e-5, atol=1e-5,
                                   err_msg=name)


def test_data_path_reference_writes_the_same_csv(mnist):
    result = datapath.measure(mnist, images=300, repeats=1)
    assert result["images"] == 300 and result["both_splits_images"] == 70000
    assert result["csv_identical"] and result["loaded_arrays_identical"]
    for key in ("convert_seconds_project", "convert_seconds_original", "convert_speedup", "load_seconds_project",
                "load_seconds_reference", "load_speedup", "convert_both_splits_seconds"):
        assert result[key] > 0, key


def test_original_convert_is_the_published_loop(tmp_path, mnist):
    data.write_idx(tmp_path / "images", mnist.x_test[:3])
    data.write_idx(tmp_path / "labels", mnist.y_test[:3])
    datapath.original_convert(tmp_path / "images", tmp_path / "labels", tmp_path / "out.csv", 3)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert len(lines) == 3
    assert [int(v) for v in lines[0].split(",")] == [int(mnist.y_test[0]), *mnist.x_test[0].ravel().tolist()]


@pytest.mark.slow
def test_quick_bench_writes_the_whole_matrix(tmp_path, mnist_dir):
    out = tmp_path / "bench"
    result = cli("bench", "--quick", "--data", mnist_dir, "--out", out)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    for row in rows:
        assert ROW_KEYS <= row.keys(), row
    for backend in BACKENDS:
        cpu = [r for r in rows if (r["backend"], r["device"]) == (backend, "cpu")]
        assert {(r["impl"], r["mode"]) for r in cpu} == {(i, m) for i in ("keras", "raw") for m in ("train", "infer")}
        for r in cpu:
            assert r["status"] == "ok" and r["replicas"] == 1 and r["batch_size"] == 128
            for key in ("images_per_second", "gflops", "pct_of_peak", "peak_gflops"):
                assert r[key] > 0, (key, r)
            # Every contender's first probe compiles its step, so it outlasts two steady steps.
            assert r["compile_seconds"] > 0 and r["load_average_1min"] >= 0
            assert len(r["window_images_per_second"]) == results["windows"] >= 5
            assert r["machine"]["cores"] >= 1 and r["machine"]["versions"][backend]
            # TensorFlow's oneDNN state where TensorFlow computed, None in a JAX worker
            assert isinstance(r["machine"]["tensorflow_onednn"], bool) == (backend == "tensorflow")
            if r["impl"] == "keras":
                assert r["keras_to_raw"] > 0
            else:
                assert r["max_abs_diff_vs_keras"] < 1e-4  # the reference computes what Keras computes
        gpu = [r for r in rows if (r["backend"], r["device"]) == (backend, "gpu")]
        assert gpu and all(r["status"] in ("ok", "unavailable") for r in gpu)
        for r in gpu:
            if r["status"] == "unavailable":
                assert "GPU" in r["reason"] and r["images_per_second"] is None
    assert {p["backend"] for p in results["peaks"] if p["device"] == "cpu"} == set(BACKENDS)
    assert results["flops_per_image"]["forward"] == 2 * 9_970_304
    assert results["machine"]["cpu"] and results["load_average_before"] >= 0
    path = results["data_path"]
    assert path["csv_identical"] and path["loaded_arrays_identical"]
    assert path["convert_speedup"] > 0 and path["load_speedup"] > 0 and path["convert_both_splits_seconds"] > 0

    report = (out / "results.md").read_text()
    assert "| backend | device | replicas | impl | mode | batch | images/s |" in report
    assert all(f"| {backend} | cpu | 1 | keras | train | 128 |" in report for backend in BACKENDS)
    assert report.count("\n| ") >= 8 + 2 + 2  # eight measured rows, two GPU rows, two peaks at least
    with Image.open(out / "results.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 600 and chart.size[1] > 300
    assert "| tensorflow | cpu |" in result.stdout  # the table is printed too
    # mnist-mb doctor's answer for this machine: the fastest Keras row per mode, and where the results are
    summary = json.loads(last_run.cache_path().read_text())
    keras_rows = [r for r in rows if r["status"] == "ok" and r["impl"] == "keras"]
    for mode in ("train", "infer"):
        best = max((r for r in keras_rows if r["mode"] == mode), key=lambda r: r["images_per_second"])
        assert summary["fastest"][mode]["images_per_second"] == best["images_per_second"]
        assert summary["fastest"][mode]["backend"] == best["backend"]
    assert summary["results"] == str(out.resolve()) and summary["machine"]["cpu_features"] == cpu_features()
    assert "TensorFlow oneDNN" in report.splitlines()[3]  # the Machine line

    # Both backends once more, their windows alternated in time: the ratio is the median of the rounds'.
    side = results["side_by_side"]
    assert side["status"] == "ok" and side["backends"] == list(BACKENDS)
    assert [(r["batch_size"], r["mode"]) for r in side["rows"]] == [(128, "train"), (128, "infer")]
    base, other = BACKENDS
    for r in side["rows"]:
        windows = r["window_images_per_second"]
        assert len(windows[base]) == len(windows[other]) == results["windows"]
        ratios = sorted(b / a for a, b in zip(windows[base], windows[other]))
        assert r["ratio"] == pytest.approx(ratios[len(ratios) // 2])
        assert (r["ratio_min"], r["ratio_max"]) == (pytest.approx(ratios[0]), pytest.approx(ratios[-1]))
        assert all(r["images_per_second"][b] > 0 for b in BACKENDS)
        assert f"| 128 | {r['mode']} | {r['images_per_second'][base]:,.0f} |" in report
    assert "## The backends side by side" in report


def test_bench_without_data_is_one_clean_error(tmp_path):
    out = tmp_path / "bench"
    result = cli("bench", "--quick", "--backends", "jax", "--data", tmp_path / "missing", "--out", out)
    assert_clean_error(result, "missing", "no such file or directory")
    assert not out.exists()


def test_bench_rejects_a_bad_batch_size(tmp_path):
    result = cli("bench", "--batch-sizes", "128,0", "--out", tmp_path)
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    # 10**9 started a worker that asked for 34 GB and relayed its traceback
    assert_clean_error(cli("bench", "--batch-sizes", "128,1000000000", "--out", tmp_path / "b"),
                       "--batch-sizes", "at most 60,000", "1,000,000,000")


def test_time_to_accuracy_rejects_runs_past_its_cap(tmp_path):
    # 10**8 runs built a plan of 10**8 entries: 13 GB before anything was checked
    assert_clean_error(cli("time-to-accuracy", "--runs", "100000000", "--out", tmp_path / "t"),
                       "--runs", "at most 100 runs", "100,000,000")


@pytest.mark.slow
def test_data_parallel_worker_measures_two_replicas(mnist_dir):
    """The replica axis: a worker with two logical CPU devices trains on the backend's own engine."""
    import os
    import subprocess
    import sys

    from mnist_multibackend.bench.workers import worker_env as _worker_env

    done = subprocess.run([sys.executable, "-m", "mnist_multibackend.bench.throughput", "--backend", BACKEND,
                           "--device", "cpu", "--replicas", "2", "--batch-sizes", "64", "--windows", "2",
                           "--window-seconds", "0.2", "--data", str(mnist_dir)], capture_output=True, text=True, timeout=600,
                          env={**_worker_env(), "MNIST_DATA_DIR": os.environ.get("MNIST_DATA_DIR", "")})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["status"] == "ok" and len(answer["runtime"]["devices"]) == 2
    [row] = answer["rows"]
    assert ROW_KEYS - {"pct_of_peak"} <= row.keys()
    assert (row["replicas"], row["impl"], row["mode"], row["batch_size"]) == (2, "keras", "train", 64)
    assert row["images_per_second"] > 0 and row["gflops"] > 0
    engine = {"jax": "DataParallel", "tensorflow": "MirroredStrategy"}[BACKEND]
    assert f"2 replicas ({engine})" in row["framework"]


def test_serving_worker_failures_are_one_line_or_one_error(tmp_path, mnist_dir):
    """A serving worker's bad input is the usual InputError; a crash mid-run is a WorkerFailed with its last line."""
    from mnist_multibackend.bench.side_by_side import MODES
    from mnist_multibackend.bench.workers import ServingWorker, WorkerFailed
    from mnist_multibackend.errors import InputError

    module = "mnist_multibackend.bench.side_by_side"
    with pytest.raises(InputError, match="missing"):
        ServingWorker(module, ["--backend", BACKEND, "--data", tmp_path / "missing"], label="test")
    with ServingWorker(module, ["--backend", BACKEND, "--batch-sizes", "16", "--data", mnist_dir],
                       label="test") as worker:
        assert worker.ready["backend"] == BACKEND and worker.ready["images"] == 60000
        for mode in MODES:
            answer = worker.ask({"batch_size": 16, "mode": mode, "steps": 2})
            assert answer["seconds"] > 0
        with pytest.raises(WorkerFailed) as failure:
            worker.ask({"batch_size": 32, "mode": "train", "steps": 2})  # a batch size it was not started with
    assert failure.value.reason == "KeyError: 32" and failure.value.exit_code == 1


def test_scaling_efficiency_is_speedup_over_replicas():
    from mnist_multibackend.bench.matrix import scaling_efficiency

    one = {"backend": "jax", "device": "cpu", "batch_size": 64, "replicas": 1, "impl": "keras", "mode": "train",
           "status": "ok", "images_per_second": 1000.0}
    two = {**one, "replicas": 2, "images_per_second": 1500.0}
    other_batch = {**two, "batch_size": 128}
    rows = scaling_efficiency([one, two, other_batch, {**one, "impl": "raw", "images_per_second": 9e9}])
    assert rows[1]["speedup"] == pytest.approx(1.5) and rows[1]["scaling_efficiency"] == pytest.approx(0.75)
    assert "speedup" not in rows[0] and "speedup" not in rows[2]  # no one-device row at batch 128
