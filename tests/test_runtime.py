"""Backend and device selection."""

import json
import shutil

import pytest

from conftest import BACKEND, OTHER_BACKEND, RUNTIME, assert_clean_error, cli
from mnist_multibackend.errors import InputError
from mnist_multibackend.runtime import choose_backend


def test_runtime_describes_what_is_in_use():
    import keras

    assert RUNTIME.backend == keras.backend.backend() == BACKEND
    assert RUNTIME.keras_version == keras.__version__
    assert RUNTIME.device == "cpu" and RUNTIME.devices


def test_switching_backend_after_keras_is_imported_is_refused():
    with pytest.raises(InputError, match=f"already imported with the {BACKEND} backend.*cannot switch to {OTHER_BACKEND}"):
        choose_backend(OTHER_BACKEND)
    assert choose_backend(BACKEND) == BACKEND


def test_pytorch_and_unknown_backends_are_refused(monkeypatch):
    with pytest.raises(InputError, match="--backend: 'torch' is not supported.*never uses PyTorch"):
        choose_backend("torch")
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the refusal names the setting to change
    with pytest.raises(InputError, match="KERAS_BACKEND: 'torch' is not supported"):
        choose_backend(None)


def test_backend_flag_overrides_the_environment(seed_dir, mnist_dir):
    result = cli("evaluate", seed_dir / "MNIST_keras_CNN.h5", "--data", mnist_dir, "--backend", OTHER_BACKEND,
                 backend=BACKEND)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["backend"] == OTHER_BACKEND


def _not_a_digit_classifier(folder):
    """A real .keras file that only Keras can refuse (after the backend starts): it scores 4 numbers, not digits."""
    import keras

    path = folder / "small.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    return path


def test_verbose_names_the_backend_before_an_error_found_after_it_starts(tmp_path):
    model = _not_a_digit_classifier(tmp_path)
    result = cli("evaluate", model, "--backend", OTHER_BACKEND, "--verbose", backend=BACKEND)
    assert f"backend {OTHER_BACKEND}" in result.stderr
    assert_clean_error(result, "small.keras", "not a digit classifier")


def test_a_missing_file_is_refused_before_the_backend_starts(tmp_path):
    result = cli("evaluate", tmp_path / "none.keras", "--verbose")
    assert_clean_error(result, "none.keras", "no such file")
    assert f"backend {BACKEND}" not in result.stderr  # --verbose names the backend once it has started


def test_gpu_request_without_a_gpu_names_backend_and_extra(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU path cannot be shown here")
    extra = {"tensorflow": "tensorflow-gpu", "jax": "jax-gpu"}[BACKEND]
    result = cli("evaluate", _not_a_digit_classifier(tmp_path), "--device", "gpu")
    assert_clean_error(result, f"the {BACKEND} backend sees no GPU", f"mnist-multibackend[{extra}]")


AVX2_HOST = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx fma avx2 bmi2\n"
AVX512_HOST = ("model name\t: AMD EPYC\nflags\t\t: fpu avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16 "
               "avx512_vpopcntdq\n")


@pytest.mark.parametrize("cpuinfo, features", [(AVX2_HOST, ["avx2", "fma"]),
                                               (AVX512_HOST, ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]),
                                               ("no flags line\n", [])])
def test_cpu_features_are_read_from_cpuinfo(cpuinfo, features):
    from mnist_multibackend.runtime import cpu_features

    assert cpu_features(cpuinfo) == features


def test_every_machine_record_names_the_cpu_features():
    from mnist_multibackend.runtime import cpu_features, machine

    assert machine()["cpu_features"] == cpu_features()


def test_results_files_name_the_cpu_with_its_features():
    from mnist_multibackend.runtime import cpu_line

    assert cpu_line({"cpu": "AMD EPYC", "cpu_features": ["avx2", "fma"], "cores": 2}) == \
        "AMD EPYC (features: avx2, fma), 2 cores"
    # results written before the features were recorded say so rather than suggest the CPU has none
    assert cpu_line({"cpu": "AMD EPYC", "cores": 2}) == "AMD EPYC (features: not recorded), 2 cores"


def test_results_files_name_tensorflows_onednn_state_from_a_tensorflow_worker():
    from mnist_multibackend.runtime import cpu_line, results_machine

    jax_host = {"cpu": "AMD EPYC", "cpu_features": ["avx2", "fma"], "cores": 2, "tensorflow_onednn": None,
                "TF_ENABLE_ONEDNN_OPTS": None}
    tensorflow_host = {**jax_host, "tensorflow_onednn": True, "TF_ENABLE_ONEDNN_OPTS": "1"}
    assert cpu_line(jax_host) == "AMD EPYC (features: avx2, fma), 2 cores"  # TensorFlow computed nothing there
    assert cpu_line(results_machine([jax_host, tensorflow_host])) == \
        "AMD EPYC (features: avx2, fma), 2 cores, TensorFlow oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)"
    assert cpu_line({**jax_host, "tensorflow_onednn": False}) == \
        "AMD EPYC (features: avx2, fma), 2 cores, TensorFlow oneDNN off (TF_ENABLE_ONEDNN_OPTS unset)"
    # oneDNN held to fewer instructions than the CPU has: every TensorFlow figure changes, so the line says so
    held = {**tensorflow_host, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert cpu_line(results_machine([jax_host, held])) == "AMD EPYC (features: avx2, fma), 2 cores, " \
        "TensorFlow oneDNN on (TF_ENABLE_ONEDNN_OPTS=1, ONEDNN_MAX_CPU_ISA=AVX2)"


def test_results_files_name_jaxs_settings_from_a_jax_worker():
    from mnist_multibackend.runtime import cpu_line, results_machine

    tensorflow_host = {"cpu": "AMD EPYC", "cpu_features": ["avx2", "fma"], "cores": 2, "tensorflow_onednn": True,
                       "TF_ENABLE_ONEDNN_OPTS": "1", "malloc": None, "xla_cpu_convolutions": None, "jax_onednn": None}
    jax_host = {**tensorflow_host, "tensorflow_onednn": None, "TF_ENABLE_ONEDNN_OPTS": None, "malloc": "kept",
                "xla_cpu_convolutions": {"decision": "set", "in_force": True}, "jax_onednn": "3.2.0"}
    expected = "AMD EPYC (features: avx2, fma), 2 cores, TensorFlow oneDNN on (TF_ENABLE_ONEDNN_OPTS=1), " \
        "malloc keeps freed memory, XLA convolutions off YNNPACK, JAX convolutions by oneDNN 3.2.0"
    # whichever worker came first
    assert cpu_line(results_machine([tensorflow_host, jax_host])) == cpu_line(results_machine([jax_host, tensorflow_host])) == expected
    assert cpu_line(results_machine([tensorflow_host])) == \
        "AMD EPYC (features: avx2, fma), 2 cores, TensorFlow oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)"
    # the user's own XLA flags and oneDNN's kernels held back change JAX's figures too, so the line says so
    held = {**jax_host, "xla_flags": ["--xla_cpu_max_isa=AVX2"], "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert cpu_line(results_machine([held])) == "AMD EPYC (features: avx2, fma), 2 cores, malloc keeps freed memory, " \
        "XLA convolutions off YNNPACK, XLA_FLAGS=--xla_cpu_max_isa=AVX2, " \
        "JAX convolutions by oneDNN 3.2.0 (ONEDNN_MAX_CPU_ISA=AVX2)"
    assert "XLA_FLAGS" not in cpu_line(results_machine([{**jax_host, "xla_flags": []}]))
