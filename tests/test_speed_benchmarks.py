"""The time-to-accuracy and overhead benchmarks: what they compute and the shape of what they write, never
how fast anything ran."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from conftest import BACKEND, REPO, assert_clean_error, cli
from mnist_multibackend.bench.time_to_accuracy import summarise, table


def _run(backend, recipe, seconds, accuracy, epoch):
    return {"backend": backend, "recipe": recipe, "epochs": 4, "seconds_to_target": seconds, "epoch_reached": epoch,
            "test_accuracy": accuracy, "process_seconds": 100.0 + (seconds or 0), "steady_images_per_second": 3000.0,
            "load_average_1min": 1.0}


def test_the_summary_takes_medians_over_runs_and_counts_runs_that_missed():
    runs = [_run("tensorflow", "fast", 80.0, 0.9940, 3), _run("tensorflow", "fast", 90.0, 0.9950, 3),
            _run("tensorflow", "fast", None, 0.9920, None), _run("jax", "fast", None, 0.99, None)]
    tf, jax = summarise(runs)
    assert (tf["runs"], tf["reached"], tf["median_seconds_to_target"]) == (3, 2, 85.0)
    assert (tf["min_seconds_to_target"], tf["max_seconds_to_target"], tf["median_epoch_reached"]) == (80.0, 90.0, 3)
    assert tf["median_test_accuracy"] == 0.9940 and tf["min_test_accuracy"] == 0.9920
    assert (jax["reached"], jax["median_seconds_to_target"]) == (0, None)
    text = table([tf, jax])
    assert "| tensorflow | fast | 4 | 3 | 2 of 3 | 85 (80–90) | 3 | 99.40% (99.20%–99.50%) | 180 (100–190) |" in text
    assert "| jax | fast | 4 | 1 | 0 of 1 | not reached |" in text


def test_time_to_accuracy_runs_in_rounds_of_every_backend_and_recipe():
    from mnist_multibackend.bench.time_to_accuracy import TimeToAccuracyConfig, schedule

    config = TimeToAccuracyConfig(backends=("tensorflow", "jax"), recipes=("fast", "original"), runs=2)
    assert schedule(config) == [(0, "tensorflow", "fast"), (0, "tensorflow", "original"), (0, "jax", "fast"),
                                (0, "jax", "original"), (1, "tensorflow", "fast"), (1, "tensorflow", "original"),
                                (1, "jax", "fast"), (1, "jax", "original")]


@pytest.mark.slow
def test_time_to_accuracy_command_writes_its_results(tmp_path, mnist_dir):
    result = cli("time-to-accuracy", "--backends", BACKEND, "--recipes", "fast", "--runs", 1, "--epochs", 1,
                 "--limit", 256, "--data", mnist_dir, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert (run["backend"], run["recipe"], run["epochs"]) == (BACKEND, "fast", 1)
    assert len(run["epoch_test_accuracy"]) == len(run["epoch_end_seconds"]) == 1
    # The clock starts with the worker's Python, so it covers imports and data loading too.
    assert 0 < run["epoch_end_seconds"][0] < run["process_seconds"]
    assert run["seconds_to_target"] is None  # 256 images cannot reach 99.25 %
    assert results["summary"][0]["runs"] == 1 and results["command"].startswith("mnist-mb time-to-accuracy")
    assert "| " + BACKEND + " | fast | 1 | 1 | 0 of 1 | not reached" in result.stdout
    assert results["command"] in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_time_to_accuracy_in_bfloat16_says_so_and_scores_the_float32_copy(tmp_path, mnist_dir):
    result = cli("time-to-accuracy", "--backends", BACKEND, "--runs", 1, "--epochs", 1, "--limit", 256,
                 "--precision", "bfloat16", "--data", mnist_dir, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert results["precision"] == run["precision"] == "bfloat16"
    assert results["command"].endswith("--precision bfloat16")
    # Two scores: the bfloat16 model's and the float32 copy's, the one saved and reported.
    assert 0 < run["mixed_precision_test_accuracy"] <= 1 and 0 < run["test_accuracy"] <= 1
    report = (tmp_path / "results.md").read_text()
    assert results["command"] in report and "Trained in bfloat16" in report


def test_time_to_accuracy_without_data_is_one_line(tmp_path):
    result = cli("time-to-accuracy", "--backends", BACKEND, "--runs", 1, "--data", tmp_path / "missing",
                 "--out", tmp_path / "out")
    assert_clean_error(result, "missing")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_overhead_benchmark_compares_the_project_with_plain_keras(tmp_path, mnist_dir):
    command = [sys.executable, "-m", "benchmarks.overhead", "--backends", BACKEND, "--rounds", "1", "--epochs", "2",
               "--images", "512", "--paths", "project,best", "--data", str(mnist_dir), "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (backend,) = json.loads((tmp_path / "results.json").read_text())["backends"]
    assert backend["backend"] == BACKEND
    rows = {row["path"]: row for row in backend["rows"]}
    assert set(rows) == {"plain", "plain-unshuffled", "project", "best"}
    assert rows["plain"]["reference"] and "ratio_to_plain" not in rows["plain"]
    for row in rows.values():
        assert row["images_per_second"] > 0 and len(row["rounds_images_per_second"]) == 1
    for name in ("plain-unshuffled", "project", "best"):
        # One round: the ratio is that round's images/s over the plain loop's in the same round.
        (ratio,) = rows[name]["rounds_ratio_to_plain"]
        assert 0 < ratio < math.inf and rows[name]["ratio_to_plain"] == ratio
        assert ratio == pytest.approx(rows[name]["images_per_second"] / rows["plain"]["images_per_second"])
    assert "| project |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_inference_paths_benchmark_compares_each_path_in_the_same_rounds(tmp_path, mnist_dir):
    command = [sys.executable, "-m", "benchmarks.inference_paths", "--backends", BACKEND, "--batch-sizes", "100",
               "--windows", "2", "--window-seconds", "0.2", "--data", str(mnist_dir), "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (backend,) = json.loads((tmp_path / "results.json").read_text())["backends"]
    assert backend["backend"] == BACKEND and backend["machine"]["cores"] >= 1
    (row,) = backend["rows"]
    expected = {"predict", "predict_on_batch", "project", "project-float", "raw-device", "raw-host"}
    assert set(row["paths"]) == expected | ({"project-no-xla"} if BACKEND == "tensorflow" else set())
    assert row["max_abs_diff_project_vs_predict"] < 1e-5  # the paths compute the same thing
    for path in row["paths"].values():
        assert path["images_per_second"] > 0 and len(path["window_images_per_second"]) == 2
    paths = row["paths"]
    for name, ratio in row["ratios"].items():
        numerator, denominator = (part.strip() for part in name.split("÷"))
        # Each round's ratio is of the two paths' windows in that round; the median is the median of those.
        assert ratio["rounds"] == pytest.approx([a / b for a, b in zip(paths[numerator]["window_images_per_second"],
                                                                       paths[denominator]["window_images_per_second"])])
        assert ratio["median"] == pytest.approx(sum(ratio["rounds"]) / 2)
    assert "project-float ÷ raw-host" in row["ratios"] and "| project |" in (tmp_path / "results.md").read_text()


VERBOSE_SAMPLE = """onednn_verbose,v1,info,oneDNN v3.7.1 (commit 1)
onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,memory_descriptors,attributes,auxiliary,problem_desc,exec_time
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:acdb::f0 diff_wei:f32:a:blocked:Acdb16a::f0,attr-scratchpad:user,alg:convolution_direct,mb128_ic32oc32_ih26oh24kh3sh1dh0ph0_iw26ow24kw3sw1dw0pw0,30.5
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:acdb::f0 diff_wei:f32:a:blocked:Acdb16a::f0,attr-scratchpad:user,alg:convolution_direct,mb128_ic32oc32_ih26oh24kh3sh1dh0ph0_iw26ow24kw3sw1dw0pw0,29.5
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:cdba::f0 dst:f32::blocked:Acdb32a::f0,,,32x1x3x3,0.5
{"variant": "nhwc"}
"""


def test_onednn_verbose_lines_sum_per_primitive_pass_and_shape():
    # benchmarks/ is not installed (tests run it as `python -m` from the checkout): load the module from its file.
    spec = importlib.util.spec_from_file_location("tf_raw_variants", REPO / "benchmarks" / "tf_raw_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.onednn_times(VERBOSE_SAMPLE, steps=5)  # 5 timed steps + 5 warm-up steps ran with verbose on
    assert [(r["primitive"], r["pass"]) for r in rows] == [("convolution", "backward_weights"), ("reorder", "undef")]
    assert rows[0]["ms_per_step"] == pytest.approx(60.0 / 10)
    assert rows[0]["problem"].startswith("mb128_ic32oc32") and rows[0]["implementation"] == "jit:avx2"


@pytest.mark.slow
@pytest.mark.tensorflow
def test_tf_raw_variants_times_each_variant_and_profiles_onednn(tmp_path):
    command = [sys.executable, "-m", "benchmarks.tf_raw_variants", "--variants", "nhwc,nchw-fused", "--steps", "2",
               "--windows", "2", "--batch-size", "16", "--out", str(tmp_path / "speed")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "speed" / "results.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["nhwc", "nchw-fused"]
    for row in rows:
        assert row["images_per_second"] > 0 and len(row["windows_images_per_second"]) == 2
        assert row["machine"]["cpu_features"] is not None
    command[command.index("--out") + 1] = str(tmp_path / "profile")
    result = subprocess.run(command[:4] + ["nhwc"] + command[5:] + ["--profile"], capture_output=True, text=True,
                            cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "profile" / "results.json").read_text())["rows"]
    if row["machine"]["tensorflow_onednn"]:  # oneDNN's verbose mode speaks only when its kernels run
        passes = {(r["primitive"], r["pass"]) for r in row["onednn"]}
        assert {("convolution", "forward_training"), ("convolution", "backward_weights")} <= passes
    else:
        assert row["onednn"] == []
