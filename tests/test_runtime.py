"""Backend and device selection."""

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


def test_pytorch_and_unknown_backends_are_refused():
    with pytest.raises(InputError, match="never uses PyTorch"):
        choose_backend("torch")


def test_backend_flag_overrides_the_environment(tmp_path):
    # evaluate on a missing model: the backend is reported on stderr before the file error
    result = cli("evaluate", tmp_path / "none.keras", "--backend", OTHER_BACKEND, backend=BACKEND)
    assert f"backend {OTHER_BACKEND}" in result.stderr
    assert_clean_error(result, "none.keras", "no such file")


def test_gpu_request_without_a_gpu_names_backend_and_extra(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU path cannot be shown here")
    extra = {"tensorflow": "tensorflow-gpu", "jax": "jax-gpu"}[BACKEND]
    result = cli("evaluate", tmp_path / "none.keras", "--device", "gpu")
    assert_clean_error(result, f"the {BACKEND} backend sees no GPU", f"mnist-multibackend[{extra}]")
