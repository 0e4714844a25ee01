"""``mnist-mb doctor`` and the machine record every result carries: CPU features, TensorFlow's oneDNN state,
and the last bench's answer, read only for the CPU it was measured on."""

import json
import os
import shlex
import subprocess
import sys
from importlib.metadata import version

import pytest

from conftest import BACKEND, assert_clean_error, cli
from cpuinfo_samples import EPYC_AVX2, EPYC_AVX512, GRAVITON2, XEON_AMX
from mnist_multibackend import allocator, doctor, jax_cpu, jax_onednn, xla_cpu_flags
from mnist_multibackend.bench import last_run
from mnist_multibackend.runtime import cpu_features, cpu_flags, cpu_line, machine


@pytest.mark.parametrize("cpuinfo, features", [
    (EPYC_AVX2, ["avx2", "fma"]),
    (EPYC_AVX512, ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]),
    (XEON_AMX, ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                "amx_bf16", "amx_int8"]),
    (GRAVITON2, []),
], ids=["epyc-milan-avx2", "epyc-genoa-avx512", "xeon-sapphire-rapids-amx", "graviton2-aarch64"])
def test_cpu_features_of_real_cpuinfo(cpuinfo, features):
    assert cpu_features(cpuinfo) == features
    # Only an x86 flags line makes the features known; ARM lists "Features", which names none of these.
    assert (cpu_flags(cpuinfo) is None) == (cpuinfo is GRAVITON2)


def _page(**machine_facts) -> str:
    """The doctor's page for this machine without probing a backend, its machine facts replaced as given."""
    found = doctor.report(backends=())
    found["machine"].update(machine_facts)
    return doctor.format_report(found)


def test_a_cpu_without_x86_flags_has_unknown_features():
    page = _page(cpu="aarch64", cpu_features=cpu_features(GRAVITON2), cpu_features_known=cpu_flags(GRAVITON2) is not None,
                 architecture="aarch64")
    assert "features     unknown (no x86 flags in /proc/cpuinfo; aarch64)" in page.splitlines()
    avx2 = _page(cpu_features=cpu_features(EPYC_AVX2), cpu_features_known=True)
    assert "features     avx2, fma (no AVX-512, no AMX)" in avx2.splitlines()


# --------------------------------------------------------------------------- the last bench's summary

def bench_results(host: dict, out) -> dict:
    """Results as matrix.run_benchmarks returns them: a faster raw row and an error row must not count."""
    def row(backend, impl, mode, images_per_second, batch_size=128, device="cpu"):
        return {"backend": backend, "device": device, "replicas": 1, "impl": impl, "mode": mode,
                "batch_size": batch_size, "images_per_second": images_per_second, "status": "ok"}

    rows = [row("tensorflow", "keras", "train", 627.0), row("tensorflow", "raw", "train", 785.0),
            row("jax", "keras", "train", 306.0), row("jax", "keras", "train", 350.0, batch_size=512),
            row("tensorflow", "keras", "infer", 4100.0), row("jax", "keras", "infer", 6214.0),
            row("jax", "raw", "infer", 9000.0),
            {"backend": "jax", "device": "gpu", "replicas": 1, "status": "error", "reason": "crashed",
             "impl": None, "mode": None, "images_per_second": None}]
    windows = {"tensorflow": [600.0, 640.0, 620.0], "jax": [420.0, 480.0, 400.0]}
    side = {"status": "ok", "backends": ["tensorflow", "jax"], "windows": 3, "window_seconds": 0.25, "rows": [
        {"batch_size": 128, "mode": "train", "images_per_second": {"tensorflow": 620.0, "jax": 420.0},
         "window_images_per_second": windows, "ratio": 0.7, "ratio_min": 0.645, "ratio_max": 0.75},
        {"batch_size": 128, "mode": "infer", "images_per_second": {"tensorflow": 4100.0, "jax": 6214.0},
         "window_images_per_second": windows, "ratio": 1.52, "ratio_min": 1.4, "ratio_max": 1.6}]}
    return {"finished_at": "2026-12-01T18:00:00+00:00", "command": f"mnist-mb bench --quick --out {out}",
            "quick": True, "machine": host, "rows": rows, "side_by_side": side}


def test_the_bench_summary_names_the_fastest_keras_row_per_mode_for_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv(last_run.CACHE_VARIABLE, str(tmp_path / "cache"))
    host = {k: v for k, v in machine().items() if k != "load_average_1min"}
    written = last_run.record(bench_results(host, tmp_path / "bench"), tmp_path / "bench")
    assert written == tmp_path / "cache" / "last-bench.json"
    assert os.listdir(tmp_path / "cache") == ["last-bench.json"]  # written through a temporary, renamed
    found = last_run.read(machine())
    assert found["status"] == "this machine"
    assert found["fastest"]["train"] == {"backend": "tensorflow", "device": "cpu", "batch_size": 128, "replicas": 1,
                                         "images_per_second": 627.0}
    assert found["fastest"]["infer"]["backend"] == "jax" and found["fastest"]["infer"]["images_per_second"] == 6214.0
    assert found["results"] == str((tmp_path / "bench").resolve())
    assert found["machine"]["cpu_features"] == cpu_features()
    lines = _page().splitlines()
    assert "  training   tensorflow on cpu, batch 128: 627 images/s" in lines
    assert "  inference  jax on cpu, batch 128: 6,214 images/s" in lines
    # The fairer comparison of the two, from windows alternated in time
    assert found["side_by_side"]["ratios"]["train"] == [{"batch_size": 128, "ratio": 0.7, "ratio_min": 0.645,
                                                         "ratio_max": 0.75}]
    assert "  side by side jax ÷ tensorflow, training: 0.70 at batch 128" in lines
    assert "  side by side jax ÷ tensorflow, inference: 1.52 at batch 128" in lines


def test_a_bench_without_the_side_by_side_comparison_still_answers(tmp_path, monkeypatch):
    """One backend measured, a side-by-side worker that failed, or a summary older than the comparison."""
    monkeypatch.setenv(last_run.CACHE_VARIABLE, str(tmp_path / "cache"))
    host = {k: v for k, v in machine().items() if k != "load_average_1min"}
    for side in (None, {"status": "error", "reason": "crashed", "backends": ["tensorflow", "jax"], "rows": []}):
        last_run.record({**bench_results(host, tmp_path), "side_by_side": side}, tmp_path)
        assert last_run.read(machine())["side_by_side"] is None
        assert "side by side" not in _page() and "  training   tensorflow on cpu" in _page()
    summary = json.loads(last_run.cache_path().read_text())
    del summary["side_by_side"]
    last_run.cache_path().write_text(json.dumps(summary))
    assert last_run.read(machine())["status"] == "this machine" and "side by side" not in _page()


def test_no_bench_yet_says_how_to_run_one(tmp_path, monkeypatch):
    monkeypatch.setenv(last_run.CACHE_VARIABLE, str(tmp_path))
    assert last_run.read(machine())["status"] == "missing"
    assert "last bench   no benchmark run on this machine yet: mnist-mb bench --quick" in _page().splitlines()


def test_a_bench_from_another_cpu_is_not_this_machines_answer(tmp_path, monkeypatch):
    monkeypatch.setenv(last_run.CACHE_VARIABLE, str(tmp_path))
    here = machine()
    other_features = cpu_features(EPYC_AVX512 if here["cpu_features"] != cpu_features(EPYC_AVX512) else EPYC_AVX2)
    host = {**here, "cpu_features": other_features}
    last_run.record(bench_results(host, tmp_path / "bench"), tmp_path / "bench")
    found = last_run.read(here)
    assert found["status"] == "other cpu" and "fastest" not in found
    assert found["recorded"]["machine"]["cpu_features"] == other_features
    page = _page()
    assert "the last benchmark ran on another CPU" in page and ", ".join(other_features) in page
    assert "images/s" not in page  # no figure offered as this machine's


@pytest.mark.parametrize("text", ["{\"schema\": 1, \"machine\": {", "[1, 2]", "\xff\xfe not text",
                                  json.dumps({"schema": 1, "machine": {}, "fastest": {"train": {"backend": 7}}}),
                                  json.dumps({"schema": 1, "machine": {}, "fastest": {}, "finished_at": "x",
                                              "command": "x", "results": "x",
                                              "side_by_side": {"base": "a", "other": "b", "ratios": {"train": [{}]}}}),
                                  # entries that passed the check and then crashed doctor's page
                                  json.dumps({"schema": 1, "machine": {}, "finished_at": "x", "command": "x",
                                              "results": "x", "fastest": {"train": {"backend": "jax",
                                                                                    "images_per_second": 9}}}),
                                  json.dumps({"schema": 1, "machine": {"cpu_features": 5}, "fastest": {},
                                              "finished_at": "x", "command": "x", "results": "x"})],
                         ids=["truncated", "a list", "binary", "damaged-entry", "damaged-side-by-side",
                              "no-device", "features-not-a-list"])
def test_a_corrupt_summary_is_a_notice(tmp_path, monkeypatch, text):
    monkeypatch.setenv(last_run.CACHE_VARIABLE, str(tmp_path))
    (tmp_path / "last-bench.json").write_bytes(text.encode("latin-1"))
    found = last_run.read(machine())
    assert found["status"] == "unreadable"
    assert found["message"].startswith(f"cannot read {tmp_path / 'last-bench.json'} (")
    assert found["message"] in _page()


def test_the_cache_folder_follows_xdg_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv(last_run.CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert last_run.cache_path() == tmp_path / "mnist-multibackend" / "last-bench.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert last_run.cache_path() == tmp_path / "home" / ".cache" / "mnist-multibackend" / "last-bench.json"


# --------------------------------------------------------------------------- the command, real probes

@pytest.fixture(scope="module")
def doctor_json(tmp_path_factory):
    """``mnist-mb doctor --json`` probing both backends, with a damaged last-bench file in its cache."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / "last-bench.json").write_text("{\"schema\": 1, ")
    result = cli("doctor", "--json", env={last_run.CACHE_VARIABLE: str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 1  # one JSON object, nothing else on stdout
    return json.loads(result.stdout)


def tensorflow_process(env=None) -> dict:
    """What a fresh process that starts TensorFlow as the project does gets from TensorFlow itself."""
    code = ("import json, os\nfrom mnist_multibackend.runtime import start\nstart('tensorflow', 'cpu')\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(json.dumps({'enabled': _pywrap_util_port.IsMklEnabled(), "
            "'value': os.environ.get('TF_ENABLE_ONEDNN_OPTS')}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
def test_doctor_json_describes_this_machine_and_both_backends(doctor_json):
    assert doctor_json["schema"] == doctor.SCHEMA
    m = doctor_json["machine"]
    assert m["cpu_features"] == cpu_features() and m["cpu_features_known"] == (cpu_flags() is not None)
    assert m["cores"] == os.cpu_count() and m["usable_cores"] == len(os.sched_getaffinity(0))
    assert m["cpu"] == machine()["cpu"] and m["python"] and m["architecture"]
    tensorflow, jax = doctor_json["backends"]["tensorflow"], doctor_json["backends"]["jax"]
    assert tensorflow["status"] == jax["status"] == "ok"
    assert (tensorflow["version"], jax["version"], jax["jaxlib_version"]) == \
        (version("tensorflow"), version("jax"), version("jaxlib"))
    assert tensorflow["keras_version"] == jax["keras_version"] == version("keras")
    xla_flags = shlex.split(os.environ.get("XLA_FLAGS", ""))
    assert tensorflow["xla_flags"] == xla_flags
    # A JAX run adds XLA:CPU's convolution setting where this XLA knows it and the flags do not set it already.
    added = xla_cpu_flags.policy(os.environ, xla_cpu_flags.xla_knows_setting(), jax_running=False) == "set"
    assert jax["xla_flags"] == xla_flags + ([xla_cpu_flags.SETTING] if added else [])
    assert isinstance(tensorflow["onednn"]["enabled"], bool)
    assert isinstance(tensorflow["built_with_cuda"], bool)
    assert tensorflow["intra_op_threads"] >= 0 and tensorflow["inter_op_threads"] >= 0
    assert "cpu" in jax["platforms"] and jax["devices"]
    for facts in (tensorflow, jax):
        assert isinstance(facts["gpus"], list)
        assert bool(facts["gpus"]) != bool(facts.get("why_no_gpu"))  # no GPU: the reason is given
    assert doctor_json["last_bench"]["status"] == "unreadable"  # a damaged file is a notice, not a crash
    page = doctor.format_report(doctor_json).splitlines()
    assert f"tensorflow   {version('tensorflow')} (keras {version('keras')})" in page
    assert any(line.startswith("  oneDNN     ") for line in page)
    policy = allocator.policy(os.environ, allocator.libc_name())
    assert m["malloc"] == policy
    assert jax["malloc"] == ("kept" if policy == "keep" else policy)
    assert tensorflow["malloc"] is None  # set for JAX only
    assert any(line.startswith("malloc       ") for line in page)


@pytest.mark.slow
def test_doctor_reports_the_onednn_state_a_tensorflow_process_has(doctor_json):
    reference = tensorflow_process()
    onednn = doctor_json["backends"]["tensorflow"]["onednn"]
    assert (onednn["enabled"], onednn["TF_ENABLE_ONEDNN_OPTS"]) == (reference["enabled"], reference["value"])
    assert onednn["set_by"] == ("user" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") is not None else
                                "mnist-mb" if reference["value"] is not None else None)


@pytest.mark.slow
def test_doctor_reports_the_users_onednn_choice(doctor_json):
    # The opposite of the default: the state must follow the user's variable, and say who set it.
    wanted = "0" if doctor_json["backends"]["tensorflow"]["onednn"]["enabled"] else "1"
    result = cli("doctor", "--backends", "tensorflow", env={"TF_ENABLE_ONEDNN_OPTS": wanted})
    assert result.returncode == 0, result.stderr[-3000:]
    state = "on" if wanted == "1" else "off"
    assert f"  oneDNN     {state} (TF_ENABLE_ONEDNN_OPTS={wanted}, set by you)" in result.stdout.splitlines()
    assert "jax" not in result.stdout.split("last bench")[0]  # only the backend asked for is probed
    held = cli("doctor", "--backends", "tensorflow", "--json", env={"TF_ENABLE_ONEDNN_OPTS": "1",
                                                                   "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert held.returncode == 0, held.stderr[-3000:]
    assert json.loads(held.stdout)["backends"]["tensorflow"]["onednn"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"


@pytest.mark.skipif(not jax_onednn.available(), reason="oneDNN is not installed here")
def test_doctor_names_the_kernels_onednn_picks_for_jax_on_this_cpu(doctor_json):
    kernels = doctor_json["backends"]["jax"]["onednn"]["conv1_kernels"]
    assert sorted(kernels) == sorted(jax_onednn.PASSES)
    # oneDNN dispatches on the CPU: its best instructions show in every kernel's name.
    best = "avx512" if "avx512f" in cpu_features() else "avx2" if "avx2" in cpu_features() else None
    if best and os.environ.get("ONEDNN_MAX_CPU_ISA") is None:
        assert all(best in kernel for kernel in kernels.values()), kernels
    if "avx2" not in cpu_features():
        return
    # Held to AVX2 (what an AVX2 CPU gets), whatever this CPU has; the page says so.
    held = cli("doctor", "--backends", "jax", "--json", env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert held.returncode == 0, held.stderr[-3000:]
    onednn = json.loads(held.stdout)["backends"]["jax"]["onednn"]
    assert onednn["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert all("avx2" in kernel and "avx512" not in kernel for kernel in onednn["conv1_kernels"].values())
    line = next(line for line in doctor.format_report(json.loads(held.stdout)).splitlines()
                if line.startswith("  oneDNN") and "jax_onednn" in line)
    assert line.endswith("held to AVX2 by ONEDNN_MAX_CPU_ISA") and "brgconv:avx2" in line


def test_a_backend_that_cannot_import_is_a_line(tmp_path):
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this TensorFlow is broken on purpose')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "fake"), os.environ.get("PYTHONPATH")]))
    result = cli("doctor", "--backends", "tensorflow", env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("tensorflow"))
    assert "not usable: backend: tensorflow is not installed (this TensorFlow is broken on purpose)" in line


def test_a_probe_that_crashes_is_a_line_and_exit_status_1():
    # XLA aborts a process whose XLA_FLAGS names a flag it does not know.
    result = cli("doctor", "--backends", "jax", env={"XLA_FLAGS": "--xla_no_such_flag"})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("jax"))
    assert line.startswith("jax          not usable: ") and "xla_no_such_flag" in line


def test_doctor_refuses_an_unknown_backend():
    assert_clean_error(cli("doctor", "--backends", "torch"), "unknown backend 'torch'")


# --------------------------------------------------------------------------- what every result records

@pytest.fixture(scope="module")
def train_metrics(trained_run):
    """metrics.json of the suite's one short real training run (conftest's ``trained_run``)."""
    return json.loads((trained_run[0] / "metrics.json").read_text())


def test_train_metrics_record_the_cpu_features(train_metrics):
    assert train_metrics["machine"]["cpu_features"] == cpu_features()
    assert train_metrics["machine"]["TF_ENABLE_ONEDNN_OPTS"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    policy = allocator.policy(os.environ, allocator.libc_name())
    expected = ("kept" if policy == "keep" else policy) if BACKEND == "jax" else None  # set for JAX only
    assert train_metrics["machine"]["malloc"] == expected
    assert ("malloc keeps freed memory" in cpu_line(train_metrics["machine"])) == (expected == "kept")
    xla = train_metrics["machine"]["xla_cpu_convolutions"]
    if BACKEND == "jax":  # the run's process inherits this one's XLA_FLAGS, set by runtime.start (conftest)
        decision = xla_cpu_flags.policy(os.environ, xla_cpu_flags.xla_knows_setting(), jax_running=False)
        assert xla == {"decision": decision, "in_force": xla_cpu_flags.in_force()}
        assert ("XLA convolutions off YNNPACK" in cpu_line(train_metrics["machine"])) == xla["in_force"]
        used = jax_cpu.chosen_conv_forms()["onednn_convs"]
        assert train_metrics["machine"]["jax_onednn"] == (jax_onednn.version() if used else None)
        assert ("JAX convolutions by oneDNN 3." in cpu_line(train_metrics["machine"])) == bool(used)
    else:
        assert xla is None and train_metrics["machine"]["jax_onednn"] is None


@pytest.mark.tensorflow
def test_tensorflow_train_metrics_record_the_onednn_state(train_metrics):
    from mnist_multibackend.keras_private import tensorflow_onednn_enabled

    # This test process started TensorFlow as mnist-mb train does: the same decision.
    assert train_metrics["machine"]["tensorflow_onednn"] is tensorflow_onednn_enabled()
    assert "TensorFlow oneDNN" in cpu_line(train_metrics["machine"])


@pytest.mark.jax
def test_jax_train_metrics_say_tensorflow_computed_nothing(train_metrics):
    assert train_metrics["machine"]["tensorflow_onednn"] is None
    assert "TensorFlow oneDNN" not in cpu_line(train_metrics["machine"])
