"""What the project chooses from the CPU's features: each choice checked on every CPU kind, whatever this host is.

The figures behind each choice are in docs/performance.md ("Choices per CPU"), each with the CPU kind
it was measured on.
"""

import os

import pytest

from cpuinfo_samples import EPYC_AVX2, EPYC_AVX512, GRAVITON2, XEON_AMX
from mnist_multibackend.runtime import ONEDNN_VARIABLE, cpu_features, tensorflow_cpu_settings


@pytest.mark.parametrize("cpuinfo, expected", [
    (EPYC_AVX2, {ONEDNN_VARIABLE: "1"}),  # off by TensorFlow's default here; on measured 2x faster
    (EPYC_AVX512, {ONEDNN_VARIABLE: "1"}),  # TensorFlow's default already (VNNI, BF16): the same
    (XEON_AMX, {ONEDNN_VARIABLE: "1"}),
    (GRAVITON2, {}),  # not x86: TensorFlow's own choice, not measured here
], ids=["epyc-avx2", "epyc-avx512", "xeon-amx", "graviton2"])
def test_onednn_is_turned_on_where_the_cpu_has_avx2(cpuinfo, expected):
    assert tensorflow_cpu_settings(cpu_features(cpuinfo), {}) == expected


@pytest.mark.parametrize("chosen", ["0", "1", ""])
def test_the_users_onednn_setting_is_never_overridden(chosen):
    for cpuinfo in (EPYC_AVX2, EPYC_AVX512, XEON_AMX, GRAVITON2):
        assert tensorflow_cpu_settings(cpu_features(cpuinfo), {ONEDNN_VARIABLE: chosen}) == {}


@pytest.mark.tensorflow
def test_this_process_runs_tensorflow_as_the_choice_says():
    """The suite's process started through runtime.start, as mnist-mb does: TensorFlow loaded with the choice."""
    from mnist_multibackend.keras_private import tensorflow_onednn_enabled

    chosen = os.environ.get(ONEDNN_VARIABLE)
    if chosen in ("0", "1"):
        assert tensorflow_onednn_enabled() is (chosen == "1")
    if "avx2" in cpu_features():
        assert chosen is not None  # the user's, or start()'s: never left to TensorFlow's default
