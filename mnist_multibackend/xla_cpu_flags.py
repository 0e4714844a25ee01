"""XLA:CPU's settings for JAX runs, chosen before JAX starts: convolutions off YNNPACK's single-convolution path.

XLA:CPU (jaxlib 0.10) hands every convolution that stands alone in the graph
to YNNPACK as a one-operation fusion, and that path ran single-threaded here:
conv1's forward pass took 23 ms on one core and on two, against 7.5 ms for the
same convolution compiled without that fusion type (``XLA_FLAGS`` below) or
fused by YNNPACK with a reduction. A training step of the plain model dropped
from 148-153 ms to 87-97 ms with the flag, and with the max pools' mask
gradient to 72 ms, against 99-111 ms for the im2col matmul forms that
``jax_cpu`` used before (docs/performance.md, "Choices per CPU"). Inference,
which YNNPACK fuses whole, ran at the same speed either way.

The flag is experimental, and an XLA that does not know a flag in ``XLA_FLAGS``
aborts the process as it starts. So it is added only when every installed
XLA that JAX may load (jaxlib's, a GPU plugin's) carries both the flag's name
and its value, and only when the user's ``XLA_FLAGS`` does not already set it.
``jax_cpu.conv_forms`` reads ``in_force()`` to choose the convolutions' forms:
the matmul forms remain the faster choice wherever the flag is not in force.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import shlex
import sys
from pathlib import Path

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"  # remove one fusion type from XLA's default set
SETTING = f"{FLAG}={VALUE}"
_state = {"decision": None}


# Packages that carry a copy of XLA, each of which parses XLA_FLAGS when it loads: jaxlib, and JAX's GPU plugins.
XLA_PACKAGES = ("jaxlib", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def xla_knows_setting() -> bool:
    """Whether every installed XLA that JAX may load (jaxlib's, and a GPU plugin's) knows ``FLAG`` and ``VALUE``:
    both names are in its shared libraries (found without importing them, which would start nothing useful)."""
    found = [_package_dir(name) for name in XLA_PACKAGES]
    return found[0] is not None and all(_library_knows(folder) for folder in found if folder is not None)


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _library_knows(folder: Path) -> bool:
    wanted = {FLAG[2:].encode(), VALUE[1:].encode()}
    for library in sorted(folder.rglob("*.so*")):
        try:
            with open(library, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                wanted = {name for name in wanted if data.find(name) < 0}
        except (OSError, ValueError):  # unreadable, or empty (mmap of 0 bytes)
            continue
        if not wanted:
            return True
    return False


def policy(environ, xla_knows: bool, jax_running: bool) -> str:
    """What ``apply`` does in a process with ``environ``: ``set``, or why it leaves ``XLA_FLAGS`` alone."""
    flags = environ.get("XLA_FLAGS", "").strip()
    if FLAG in flags:
        return "user's setting"
    if flags and not flags.startswith("-"):  # XLA then reads its flags from the file of that name
        return "a file of flags (XLA_FLAGS names one)"
    try:
        shlex.split(flags)
    except ValueError:  # unbalanced quotes: what the user wrote is left for XLA to judge
        return "user's flags, unbalanced quotes"
    if jax_running:
        return "JAX already running"
    if not xla_knows:
        return "unknown to this XLA"
    return "set"


def _jax_running() -> bool:
    """Whether XLA has already read its flags in this process (JAX's backends are initialised)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the name: assume the worst, leave the flags alone
        return True


def apply(environ=os.environ) -> str:
    """Add ``SETTING`` to ``environ``'s ``XLA_FLAGS`` where ``policy`` says so; once per process. Returns the decision."""
    if _state["decision"] is not None:
        return _state["decision"]
    decision = policy(environ, FLAG not in environ.get("XLA_FLAGS", "") and xla_knows_setting(), _jax_running())
    if decision == "set":
        environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {SETTING}".strip()
    _state["decision"] = decision
    return decision


def state() -> str | None:
    """This process's decision, or None when ``apply`` has not run (no JAX backend started)."""
    return _state["decision"]


def users_flags(xla_flags: str | None = None) -> list[str]:
    """The flags in ``XLA_FLAGS`` (default: this process's) other than the one ``apply`` added: the user's own,
    which change what XLA compiles (``--xla_cpu_max_isa=AVX2``), so results files record them."""
    text = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    try:
        words = shlex.split(text)
    except ValueError:  # unbalanced quotes: kept whole, as the user wrote them
        return [text]
    if _state["decision"] == "set" and SETTING in words:
        words.remove(SETTING)
    return words


def in_force(xla_flags: str | None = None) -> bool:
    """Whether XLA compiles this process's convolutions off YNNPACK's single-convolution path:
    ``XLA_FLAGS`` (default: this process's) removes that fusion type, and was read after it was set."""
    if xla_flags is None:
        if _state["decision"] == "JAX already running":
            return False
        xla_flags = os.environ.get("XLA_FLAGS", "")
    try:
        words = shlex.split(xla_flags)
    except ValueError:  # unbalanced quotes: XLA will say so itself
        return False
    values = [word.split("=", 1)[1] for word in words if word.startswith(FLAG + "=")]
    if not values:
        return False
    # XLA reads the last setting: a list of fusion types, each with + (add to the default set) or - (remove
    # from it), or none of them signed (the whole set); names in either case, with or without the prefix.
    items = [item.strip() for item in values[-1].split(",") if item.strip()]
    convolution = VALUE[1:]

    def name(item: str) -> str:
        bare = item.lstrip("+-").upper()
        return bare if bare.startswith("LIBRARY_FUSION_TYPE_") else "LIBRARY_FUSION_TYPE_" + bare

    if all(item[0] not in "+-" for item in items):
        return convolution not in {name(item) for item in items}
    removed = [item[0] == "-" for item in items if name(item) == convolution]
    return bool(removed) and removed[-1]
