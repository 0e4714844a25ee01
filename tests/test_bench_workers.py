"""The benchmarks' worker protocol and its one failure policy, with real worker processes that really fail.

A worker that crashes or fails is one error row in the results (its reason and
exit status), the other measurements go on, and the command exits 1 with no
traceback. Bad input stays one ``mnist-mb: error:`` line and exit status 2
(see ``test_bench_without_data_is_one_clean_error``).
"""

import json

from conftest import cli
from mnist_multibackend.bench import last_run
from mnist_multibackend.bench.workers import run_worker

# XLA aborts the process when XLA_FLAGS names a flag it does not know: a JAX worker that crashes as it starts.
CRASHING_JAX = {"XLA_FLAGS": "--xla_no_such_flag"}


def test_a_worker_that_exits_with_an_error_is_one_error_row(capsys):
    answer = run_worker("mnist_multibackend.bench.throughput", ["--backend", "no-such-backend", "--device", "cpu"],
                        label="test", echo=False)
    assert answer["status"] == "error" and answer["exit_code"] == 2
    assert "invalid choice: 'no-such-backend'" in answer["reason"] and "\n" not in answer["reason"]
    assert "test: the worker failed (exit status 2)" in capsys.readouterr().err


def test_a_crashed_time_to_accuracy_worker_is_an_error_row_and_exit_status_1(tmp_path, mnist_dir):
    result = cli("time-to-accuracy", "--backends", "jax", "--runs", 1, "--epochs", 1, "--limit", 256,
                 "--data", mnist_dir, "--out", tmp_path, env=CRASHING_JAX)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert (run["backend"], run["recipe"], run["status"]) == ("jax", "fast", "error")
    assert run["exit_code"] != 0 and "xla_no_such_flag" in run["reason"]
    (summary,) = results["summary"]
    assert (summary["runs"], summary["failed"]) == (0, 1)
    assert "| jax | fast | – | 0 (1 failed) |" in result.stdout
    assert "jax, recipe fast: failed (exit status" in (tmp_path / "results.md").read_text()


def test_crashed_bench_workers_are_error_rows_and_exit_status_1(tmp_path, mnist_dir):
    out = tmp_path / "bench"
    cache = tmp_path / "cache"
    result = cli("bench", "--quick", "--backends", "jax", "--data", mnist_dir, "--out", out,
                 env={**CRASHING_JAX, last_run.CACHE_VARIABLE: str(cache)})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["backend"], r["device"], r["status"]) for r in rows] == [("jax", d, "error") for d in ("cpu", "gpu")]
    assert all(r["exit_code"] != 0 and "xla_no_such_flag" in r["reason"] for r in rows)
    assert results["data_path"]["csv_identical"]  # what needs no worker is still measured
    assert "- jax cpu: error (exit status" in (out / "results.md").read_text()
    assert (out / "results.png").exists()
    assert not cache.exists()  # nothing measured: mnist-mb doctor keeps the last bench that measured something
