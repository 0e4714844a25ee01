"""oneDNN's convolutions, called from XLA:CPU as custom calls: for JAX's training step.

On XLA:CPU (jaxlib 0.10) the model's convolutions run on Eigen: their weight
gradients at 60-90 GFLOP/s, and they were most of what kept JAX's training step
behind TensorFlow's, whose oneDNN computes the same gradients at 180-190 GFLOP/s
on the same AVX-512 CPU (conv1, batch 128: 16-18 ms in XLA, 7.1 ms in oneDNN;
``python -m benchmarks.conv_passes``). Every other formulation that XLA can run
(im2col matmuls, per-tap matmuls, slices) stayed at or below XLA's own
(docs/performance.md). So this module hands the convolutions to oneDNN itself:
all three passes, since oneDNN also ran the forward passes and input gradients
faster (conv1: 6.5 against 8.4 ms forward, 7.1 against 9.7 ms input gradient).

How, with no compiled code of the project's own:

- oneDNN is the ``onednn-cpu-gomp`` wheel's ``libdnnl.so.3`` (the CPU-only
  build with GNU OpenMP), loaded with ``ctypes`` from the files that
  distribution installed, never from a search path. Its C API is stable across
  oneDNN 3.x.
- XLA calls handlers written with ``ctypes.CFUNCTYPE`` through its FFI
  (``jax.ffi``), one per pass: XLA passes its own buffers, so nothing is copied.
  ``jax.pure_callback`` copied both 11 MB inputs of conv1's weight gradient into
  new arrays on every call (2.9 ms of an 11 ms call) and is not used.
- The primitive for each pass and shape is created once, when the step is
  traced; a shape that oneDNN cannot compute (or no library) keeps XLA's pass.

A handler takes the GIL like any Python callback and releases it while oneDNN
runs; one lock keeps oneDNN's calls one at a time, since each already uses every
core through OpenMP and a primitive's memory objects are shared.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import threading
import weakref
from pathlib import Path

DISTRIBUTION = "onednn-cpu-gomp"
LIBRARY = "libdnnl.so.3"

# oneDNN 3.x C API values (dnnl_types.h).
_F32, _CPU, _CONVOLUTION_DIRECT, _FORMAT_ANY = 3, 1, 1, 1
_FORWARD_TRAINING = 64
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 1, 17, 33, 129, 145, 161
_QUERY_IMPL_INFO, _QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD, _QUERY_SCRATCHPAD_MD = 8, 131, 132, 136
_ARG_SCRATCHPAD, _SCRATCHPAD_MODE_USER = 80, 1
_STREAM_IN_ORDER = 1
# Batch normalization's (dnnl_types.h): arguments, its backward propagation, its flags, the workspace query.
_ARG_MEAN, _ARG_VARIANCE, _ARG_SCALE, _ARG_SHIFT, _ARG_WORKSPACE, _ARG_DIFF_SCALE, _ARG_DIFF_SHIFT = (
    49, 50, 51, 52, 64, 255, 256)
_BACKWARD = 128
_USE_SCALE, _USE_SHIFT, _FUSE_NORM_RELU = 0x2, 0x4, 0x8
_QUERY_WORKSPACE_MD = 135
_ALLOCATE = ctypes.c_void_p(2 ** 64 - 1)  # DNNL_MEMORY_ALLOCATE: the library allocates the memory itself
_Dims = ctypes.c_int64 * 12  # dnnl_dims_t


class OneDnnError(RuntimeError):
    """oneDNN refused a call (its status code in the message)."""


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


def library_path() -> Path | None:
    """Where the ``onednn-cpu-gomp`` distribution installed ``libdnnl.so.3``; None if it is not installed."""
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == LIBRARY:
            path = Path(file.locate()).resolve()
            return path if path.is_file() else None
    return None


@functools.cache
def _onednn():
    """The loaded library, its CPU engine and stream: (lib, engine, stream); None where it cannot load."""
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # e.g. no libgomp.so.1 on this system
        return None
    lib.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
    lib.dnnl_primitive_desc_query_md.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.dnnl_version.restype = ctypes.POINTER(ctypes.c_int * 3)
    lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
    engine, stream = ctypes.c_void_p(), ctypes.c_void_p()
    if (lib.dnnl_engine_create(ctypes.byref(engine), _CPU, ctypes.c_size_t(0))
            or lib.dnnl_stream_create(ctypes.byref(stream), engine, ctypes.c_uint(_STREAM_IN_ORDER))):
        return None
    return lib, engine, stream


def available() -> bool:
    """Whether oneDNN is installed and loads here."""
    return _onednn() is not None


def version() -> str | None:
    """oneDNN's version (``3.2.0``), or None where it is not available."""
    if not available():
        return None
    return ".".join(str(v) for v in _onednn()[0].dnnl_version().contents)


def _check(status: int, what: str) -> None:
    if status:
        raise OneDnnError(f"oneDNN {what} failed with status {status}")


PASSES = ("forward", "input_gradient", "weight_gradient")


class _Primitives:
    """Owns the oneDNN primitives and memory objects it creates (freed with it)."""

    def _primitive(self, descriptor):
        primitive = ctypes.c_void_p()
        _check(_onednn()[0].dnnl_primitive_create(ctypes.byref(primitive), descriptor), "primitive")
        self._primitives.append(primitive)
        return primitive

    def _memory(self, md, handle):
        memory = ctypes.c_void_p()
        _check(_onednn()[0].dnnl_memory_create(ctypes.byref(memory), md, _onednn()[1], handle), "memory")
        self._memories.append(memory)
        return memory


class Convolution(_Primitives):
    """One pass of a VALID, stride-1 convolution of channels-last inputs (n, h, w, c) by a kernel
    (kh, kw, c, f) as Keras stores it, by oneDNN: one primitive for one pass and shape.

    - ``forward``: (inputs, kernel) -> outputs (n, oh, ow, f);
    - ``input_gradient``: (upstream, kernel) -> inputs' gradient (n, h, w, c);
    - ``weight_gradient``: (inputs, upstream) -> kernel's gradient (kh, kw, c, f).

    The images stay in their channels-last layout (oneDNN reads it as it is); the kernel goes through
    oneDNN's blocked layout of its choice, by a reorder before the pass or after it.
    """

    def __init__(self, pass_: str, input_shape: tuple[int, ...], kernel_shape: tuple[int, ...]):
        lib, engine, _ = _onednn()
        n, h, w, c = input_shape
        kh, kw, _, f = kernel_shape
        oh, ow = h - kh + 1, w - kw + 1
        self.pass_, self.input_shape, self.kernel_shape = pass_, tuple(input_shape), tuple(kernel_shape)
        self.output_shape = (n, oh, ow, f)
        self._primitives, self._memories, descriptors, mds = [], [], [], []
        # Freed with the object, not at exit (the process's memory goes then anyway).
        weakref.finalize(self, _release, lib, self._primitives, self._memories).atexit = False

        def strided(dims, strides):  # oneDNN's logical (N, C, H, W) / (O, I, H, W) over our physical layouts
            md = ctypes.c_void_p()
            _check(lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), len(dims), _Dims(*dims), _F32,
                                                            _Dims(*strides)), "memory descriptor")
            mds.append(md)
            return md

        def descriptor():
            pd = ctypes.c_void_p()
            descriptors.append(pd)
            return pd

        images = strided((n, c, h, w), (h * w * c, 1, w * c, c))
        outputs = strided((n, f, oh, ow), (oh * ow * f, 1, ow * f, f))
        hwio = strided((f, c, kh, kw), (1, f, kw * c * f, c * f))
        any_weights = ctypes.c_void_p()
        _check(lib.dnnl_memory_desc_create_with_tag(ctypes.byref(any_weights), 4, _Dims(f, c, kh, kw), _F32,
                                                    _FORMAT_ANY), "memory descriptor")
        mds.append(any_weights)
        ones, zeros = _Dims(*[1] * 12), _Dims()
        geometry = (ones, zeros, zeros, zeros)  # strides, dilations (0: none), padding before and after
        # Each primitive gets scratch memory of its own (oneDNN's "user" mode), not the library's: the library
        # keeps one buffer per thread, sized when a primitive is created, and XLA runs the step on other threads
        # than the one that traced it. Nearly every kernel needs some (12-156 KB for the model's AVX-512 ones);
        # the gemm-based ones that oneDNN picks on CPUs without AVX2 failed there, or crashed the process.
        attr = ctypes.c_void_p()
        _check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "attributes")
        try:
            _check(lib.dnnl_primitive_attr_set_scratchpad_mode(attr, _SCRATCHPAD_MODE_USER), "scratchpad mode")
            forward = descriptor()
            _check(lib.dnnl_convolution_forward_primitive_desc_create(
                ctypes.byref(forward), engine, _FORWARD_TRAINING, _CONVOLUTION_DIRECT, images, any_weights, None,
                outputs, *geometry, attr), "convolution")
            if pass_ == "forward":
                chosen, weights_query = forward, _QUERY_WEIGHTS_MD
            elif pass_ == "input_gradient":
                chosen, weights_query = descriptor(), _QUERY_WEIGHTS_MD
                _check(lib.dnnl_convolution_backward_data_primitive_desc_create(
                    ctypes.byref(chosen), engine, _CONVOLUTION_DIRECT, images, any_weights, outputs, *geometry,
                    forward, attr), "convolution input gradient")
            else:
                chosen, weights_query = descriptor(), _QUERY_DIFF_WEIGHTS_MD
                _check(lib.dnnl_convolution_backward_weights_primitive_desc_create(
                    ctypes.byref(chosen), engine, _CONVOLUTION_DIRECT, images, any_weights, None, outputs,
                    *geometry, forward, attr), "convolution weight gradient")
            info = ctypes.c_char_p()
            lib.dnnl_primitive_desc_query(chosen, _QUERY_IMPL_INFO, 0, ctypes.byref(info))
            self.implementation = (info.value or b"").decode()
            blocked = ctypes.c_void_p(lib.dnnl_primitive_desc_query_md(chosen, weights_query, 0))
            self._pass = self._primitive(chosen)
            self._kernel, self._blocked = self._memory(hwio, None), self._memory(blocked, _ALLOCATE)
            reorder = descriptor()
            source, target = (blocked, hwio) if pass_ == "weight_gradient" else (hwio, blocked)
            _check(lib.dnnl_reorder_primitive_desc_create(ctypes.byref(reorder), source, engine, target, engine,
                                                          attr), "reorder")
            self._reorder = self._primitive(reorder)
            self._scratch, self._reorder_scratch = (
                self._memory(ctypes.c_void_p(lib.dnnl_primitive_desc_query_md(pd, _QUERY_SCRATCHPAD_MD, 0)), _ALLOCATE)
                for pd in (chosen, reorder))
            self._images, self._outputs = self._memory(images, None), self._memory(outputs, None)
        finally:
            lib.dnnl_primitive_attr_destroy(attr)
            for md in mds:
                lib.dnnl_memory_desc_destroy(md)
            for pd in descriptors:
                if pd:
                    lib.dnnl_primitive_desc_destroy(pd)
        arg = _ExecArg
        if pass_ == "forward":  # operands, result: the memories that XLA's buffers are bound to, in order
            self._bound = (self._images, self._kernel, self._outputs)
            self._args = (arg(_ARG_SRC, self._images), arg(_ARG_WEIGHTS, self._blocked), arg(_ARG_DST, self._outputs))
        elif pass_ == "input_gradient":
            self._bound = (self._outputs, self._kernel, self._images)
            self._args = (arg(_ARG_DIFF_DST, self._outputs), arg(_ARG_WEIGHTS, self._blocked),
                          arg(_ARG_DIFF_SRC, self._images))
        else:
            self._bound = (self._images, self._outputs, self._kernel)
            self._args = (arg(_ARG_SRC, self._images), arg(_ARG_DIFF_DST, self._outputs),
                          arg(_ARG_DIFF_WEIGHTS, self._blocked))
        self._args = (arg * 4)(*self._args, arg(_ARG_SCRATCHPAD, self._scratch))
        self._reorder_args = (arg * 3)(*(
            (arg(_ARG_SRC, self._blocked), arg(_ARG_DST, self._kernel)) if pass_ == "weight_gradient"
            else (arg(_ARG_SRC, self._kernel), arg(_ARG_DST, self._blocked))),
            arg(_ARG_SCRATCHPAD, self._reorder_scratch))

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shapes of the two operands and of the result, in the order ``run`` takes their addresses."""
        images, kernel, outputs = self.input_shape, self.kernel_shape, self.output_shape
        return {"forward": (images, kernel, outputs), "input_gradient": (outputs, kernel, images),
                "weight_gradient": (images, outputs, kernel)}[self.pass_]

    def run(self, first: int, second: int, result: int) -> None:
        """Compute into the buffer at address ``result`` from the operands at ``first`` and ``second``
        (C-contiguous float32 buffers of ``shapes``)."""
        lib, _, stream = _onednn()
        with _LOCK:
            for memory, address in zip(self._bound, (first, second, result)):
                _check(lib.dnnl_memory_set_data_handle(memory, ctypes.c_void_p(address)), "data handle")
            if self.pass_ != "weight_gradient":
                _check(lib.dnnl_primitive_execute(self._reorder, stream, 3, self._reorder_args), "reorder")
            _check(lib.dnnl_primitive_execute(self._pass, stream, 4, self._args), "execution")
            if self.pass_ == "weight_gradient":
                _check(lib.dnnl_primitive_execute(self._reorder, stream, 3, self._reorder_args), "reorder")
            _check(lib.dnnl_stream_wait(stream), "stream")

    def __call__(self, first, second):
        """The pass on numpy arrays (a check, and the tests')."""
        import numpy as np

        first, second = (np.ascontiguousarray(a, np.float32) for a in (first, second))
        if (first.shape, second.shape) != self.shapes[:2]:
            raise ValueError(f"shapes {first.shape}, {second.shape}; this primitive computes {self.shapes[:2]}")
        result = np.empty(self.shapes[2], np.float32)
        self.run(first.ctypes.data, second.ctypes.data, result.ctypes.data)
        return result


_LOCK = threading.Lock()


def _release(lib, primitives, memories) -> None:
    for primitive in primitives:
        lib.dnnl_primitive_destroy(primitive)
    for memory in memories:
        lib.dnnl_memory_destroy(memory)


@functools.lru_cache(maxsize=64)
def convolution(pass_: str, input_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> Convolution | None:
    """The primitive for this pass and these shapes, created once; None where oneDNN is missing or cannot
    compute them."""
    if not available() or len(input_shape) != 4 or len(kernel_shape) != 4 or input_shape[3] != kernel_shape[2]:
        return None
    if min(input_shape[1] - kernel_shape[0], input_shape[2] - kernel_shape[1]) < 0 or 0 in input_shape + kernel_shape:
        return None  # no output pixel, or an empty operand: nothing for oneDNN to compute
    try:
        return Convolution(pass_, tuple(input_shape), tuple(kernel_shape))
    except OneDnnError:
        return None



BATCH_NORM_PASSES = ("forward", "backward")


class BatchNorm(_Primitives):
    """One pass of batch normalization in training, of channels-last images (n, h, w, c) over all but their
    channels, with a learned scale (gamma) and offset (beta), and with the ReLU that follows it or without,
    by oneDNN: one primitive for one pass, shape, epsilon and ReLU.

    - ``forward``: (inputs, gamma, beta) -> (outputs, mean, variance[, workspace]): the batch's mean and
      variance (without Bessel's correction), as Keras's training step uses them;
    - ``backward``: (inputs, upstream, mean, variance, gamma[, workspace]) -> the gradients of inputs, gamma
      and beta, ``upstream`` being the outputs' gradient.

    With the ReLU, the forward pass also returns ``workspace_size`` bytes: its record of which outputs the
    ReLU zeroed, which the backward pass reads. Everything else is float32.
    """

    def __init__(self, pass_: str, shape: tuple[int, ...], epsilon: float, relu: bool):
        lib, engine, _ = _onednn()
        n, h, w, c = shape
        self.pass_, self.shape, self.epsilon, self.relu = pass_, tuple(shape), float(epsilon), bool(relu)
        self._primitives, self._memories, descriptors, mds = [], [], [], []
        weakref.finalize(self, _release, lib, self._primitives, self._memories).atexit = False

        def strided(dims, strides):
            md = ctypes.c_void_p()
            _check(lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), len(dims), _Dims(*dims), _F32,
                                                            _Dims(*strides)), "memory descriptor")
            mds.append(md)
            return md

        def descriptor():
            pd = ctypes.c_void_p()
            descriptors.append(pd)
            return pd

        images = strided((n, c, h, w), (h * w * c, 1, w * c, c))
        channels = strided((c,), (1,))
        flags = ctypes.c_uint(_USE_SCALE | _USE_SHIFT | (_FUSE_NORM_RELU if relu else 0))
        attr = ctypes.c_void_p()
        _check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "attributes")
        try:  # each primitive its own scratch memory, as Convolution's
            _check(lib.dnnl_primitive_attr_set_scratchpad_mode(attr, _SCRATCHPAD_MODE_USER), "scratchpad mode")
            forward = chosen = descriptor()
            _check(lib.dnnl_batch_normalization_forward_primitive_desc_create(
                ctypes.byref(forward), engine, _FORWARD_TRAINING, images, images, ctypes.c_float(epsilon), flags,
                attr), "batch normalization")
            if pass_ == "backward":
                chosen = descriptor()
                _check(lib.dnnl_batch_normalization_backward_primitive_desc_create(
                    ctypes.byref(chosen), engine, _BACKWARD, images, images, images, ctypes.c_float(epsilon), flags,
                    forward, attr), "batch normalization gradient")
            info = ctypes.c_char_p()
            lib.dnnl_primitive_desc_query(chosen, _QUERY_IMPL_INFO, 0, ctypes.byref(info))
            self.implementation = (info.value or b"").decode()
            self._pass = self._primitive(chosen)
            self._scratch = self._memory(
                ctypes.c_void_p(lib.dnnl_primitive_desc_query_md(chosen, _QUERY_SCRATCHPAD_MD, 0)), _ALLOCATE)
            workspace = ctypes.c_void_p(lib.dnnl_primitive_desc_query_md(forward, _QUERY_WORKSPACE_MD, 0))
            self.workspace_size = int(lib.dnnl_memory_desc_get_size(workspace)) if relu else 0
            # A memory object for each operand and result, in the order run() takes their addresses.
            roles = {"forward": (_ARG_SRC, _ARG_SCALE, _ARG_SHIFT, _ARG_DST, _ARG_MEAN, _ARG_VARIANCE),
                     "backward": (_ARG_SRC, _ARG_DIFF_DST, _ARG_MEAN, _ARG_VARIANCE, _ARG_SCALE,
                                  _ARG_DIFF_SRC, _ARG_DIFF_SCALE, _ARG_DIFF_SHIFT)}[pass_]
            image_roles = (_ARG_SRC, _ARG_DST, _ARG_DIFF_DST, _ARG_DIFF_SRC)
            bound = [(role, self._memory(images if role in image_roles else channels, None)) for role in roles]
            if relu:  # the forward pass's last result, the backward pass's last operand
                bound.insert(len(bound) if pass_ == "forward" else 5, (_ARG_WORKSPACE, self._memory(workspace, None)))
        finally:
            lib.dnnl_primitive_attr_destroy(attr)
            for md in mds:
                lib.dnnl_memory_desc_destroy(md)
            for pd in descriptors:
                if pd:
                    lib.dnnl_primitive_desc_destroy(pd)
        self._bound = tuple(memory for _, memory in bound)
        self._args = (_ExecArg * (len(bound) + 1))(*(_ExecArg(role, memory) for role, memory in bound),
                                                   _ExecArg(_ARG_SCRATCHPAD, self._scratch))

    @property
    def shapes(self) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
        """The shapes of the operands and of the results, in the order ``run`` takes their addresses."""
        images, channels, workspace = self.shape, (self.shape[-1],), ((self.workspace_size,),) if self.relu else ()
        if self.pass_ == "forward":
            return (images, channels, channels), (images, channels, channels, *workspace)
        return (images, images, channels, channels, channels, *workspace), (images, channels, channels)

    def run(self, *addresses: int) -> None:
        """Compute into the results' buffers from the operands' (C-contiguous, at these addresses)."""
        lib, _, stream = _onednn()
        with _LOCK:
            for memory, address in zip(self._bound, addresses, strict=True):
                _check(lib.dnnl_memory_set_data_handle(memory, ctypes.c_void_p(address)), "data handle")
            _check(lib.dnnl_primitive_execute(self._pass, stream, len(self._args), self._args), "execution")
            _check(lib.dnnl_stream_wait(stream), "stream")

    def __call__(self, *operands):
        """The pass on numpy arrays (a check, and the tests'): its results, as a tuple."""
        import numpy as np

        operand_shapes, result_shapes = self.shapes
        workspace_operand = self.relu and self.pass_ == "backward"
        operands = [np.ascontiguousarray(a, np.uint8 if workspace_operand and i == 5 else np.float32)
                    for i, a in enumerate(operands)]
        if tuple(a.shape for a in operands) != operand_shapes:
            raise ValueError(f"shapes {[a.shape for a in operands]}; this primitive computes {operand_shapes}")
        results = [np.empty(shape, np.uint8 if self.relu and self.pass_ == "forward" and i == 3 else np.float32)
                   for i, shape in enumerate(result_shapes)]
        self.run(*(a.ctypes.data for a in operands + results))
        return tuple(results)


def batch_norm_epsilon(epsilon: float) -> float:
    """``epsilon`` as oneDNN takes it, a float32: the key of its primitives."""
    import numpy as np

    return float(np.float32(epsilon))


def batch_norm(pass_: str, shape: tuple[int, ...], epsilon: float, relu: bool = False) -> BatchNorm | None:
    """The batch norm primitive for this pass, shape, epsilon and ReLU, created once; None where oneDNN is
    missing or cannot compute it."""
    return _batch_norm(pass_, tuple(shape), batch_norm_epsilon(epsilon), bool(relu))


@functools.lru_cache(maxsize=64)
def _batch_norm(pass_: str, shape: tuple[int, ...], epsilon: float, relu: bool) -> BatchNorm | None:
    if not available() or len(shape) != 4 or 0 in shape:
        return None
    try:
        return BatchNorm(pass_, shape, epsilon, relu)
    except OneDnnError:
        return None



def kernels(input_shape: tuple[int, ...] = (128, 26, 26, 32),
            kernel_shape: tuple[int, ...] = (3, 3, 32, 32)) -> dict[str, str] | None:
    """The kernel oneDNN picks on this CPU for each pass of a convolution (by default the model's conv1 at batch
    128, most of a training step), e.g. ``brgconv:avx2``: what its CPU dispatch, or ``ONEDNN_MAX_CPU_ISA``,
    chose. None where oneDNN is not available."""
    primitives = {pass_: convolution(pass_, tuple(input_shape), tuple(kernel_shape)) for pass_ in PASSES}
    if None in primitives.values():
        return None
    return {pass_: primitive.implementation for pass_, primitive in primitives.items()}

# --- The XLA FFI handler (xla/ffi/api/c_api.h, API version 0.1), in ctypes. ---

class _ExtensionBase(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int), ("next", ctypes.c_void_p)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion), ("traits", ctypes.c_uint32),
                ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffers(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets share this layout
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.c_void_p), ("items", ctypes.POINTER(ctypes.c_void_p))]


class _Attrs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.c_void_p), ("names", ctypes.c_void_p), ("attrs", ctypes.c_void_p)]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.POINTER(_ExtensionBase)),
                ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int), ("args", _Buffers),
                ("rets", _Buffers), ("attrs", _Attrs), ("future", ctypes.c_void_p)]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("dtype", ctypes.c_int),
                ("data", ctypes.c_void_p), ("rank", ctypes.c_int64), ("dims", ctypes.POINTER(ctypes.c_int64))]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("message", ctypes.c_char_p),
                ("errc", ctypes.c_int)]


_ERROR_CREATE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorCreateArgs))


class _Api(ctypes.Structure):  # the head of XLA_FFI_Api: enough to reach XLA_FFI_Error_Create
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("api_version", _ApiVersion),
                ("internal_api", ctypes.c_void_p), ("error_create", _ERROR_CREATE)]


_EXTENSION_METADATA, _STAGE_EXECUTE, _U8_TYPE, _F32_TYPE, _INVALID_ARGUMENT, _INTERNAL = 1, 3, 6, 11, 3, 13


def _error(frame, code: int, message: str):
    args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message.encode(), code)
    return ctypes.cast(frame.api, ctypes.POINTER(_Api)).contents.error_create(ctypes.byref(args))


def _buffer(pointer) -> tuple[_Buffer, tuple[int, ...]]:
    buffer = ctypes.cast(pointer, ctypes.POINTER(_Buffer)).contents
    return buffer, tuple(buffer.dims[i] for i in range(buffer.rank))


def _handler(target: str, compute):
    """The XLA FFI handler of ``target``: ``compute(operands, results)``, each a list of ``(buffer, shape)``.
    The message it returns, or an exception it raises, becomes the step's error."""

    @ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))
    def handler(frame_pointer):
        frame = frame_pointer.contents
        try:
            if frame.extension_start and frame.extension_start.contents.type == _EXTENSION_METADATA:
                # XLA asks which FFI version the handler was written for, once, when it is registered.
                metadata = ctypes.cast(frame.extension_start, ctypes.POINTER(_MetadataExtension)).contents.metadata
                metadata.contents.api_version = _ApiVersion(ctypes.sizeof(_ApiVersion), None, 0, 1)
                metadata.contents.traits = 0
                return None
            if frame.stage != _STAGE_EXECUTE:
                return None
            message = compute([_buffer(frame.args.items[i]) for i in range(frame.args.size)],
                              [_buffer(frame.rets.items[i]) for i in range(frame.rets.size)])
            return None if message is None else _error(frame, _INVALID_ARGUMENT, f"{target}: {message}")
        except Exception as error:  # an exception must not cross into XLA: it becomes the step's error
            return _error(frame, _INTERNAL, f"{target}: {type(error).__name__}: {error}")

    return handler


def _convolution_pass(pass_: str):
    def compute(operands, results):
        if len(operands) != 2 or len(results) != 1:
            return "takes 2 operands and returns 1"
        (first, first_shape), (second, second_shape), (result, result_shape) = *operands, *results
        if any(b.dtype != _F32_TYPE or b.rank != 4 for b in (first, second, result)):
            return "float32 operands of rank 4 only"
        input_shape, kernel_shape = {"forward": (first_shape, second_shape),
                                     "input_gradient": (result_shape, second_shape),
                                     "weight_gradient": (first_shape, result_shape)}[pass_]
        primitive = convolution(pass_, input_shape, kernel_shape)
        if primitive is None or primitive.shapes != (first_shape, second_shape, result_shape):
            return f"oneDNN cannot compute {first_shape}, {second_shape} -> {result_shape}"
        primitive.run(first.data, second.data, result.data)
        return None

    return compute


def _batch_norm_pass(pass_: str):
    # Operands: the pass's, then epsilon as a float32[1] (it is part of the primitive, and XLA's FFI passes a
    # constant operand more simply than an attribute); the ReLU's workspace makes one more result or operand.
    plain = {"forward": (4, 3), "backward": (6, 3)}[pass_]

    def compute(operands, results):
        relu = (len(operands), len(results)) != plain
        if relu and (len(operands), len(results)) != (plain[0] + (pass_ == "backward"),
                                                      plain[1] + (pass_ == "forward")):
            return f"takes {plain[0]} operands and returns {plain[1]}, one more of either with the ReLU"
        (epsilon, epsilon_shape), buffers = operands[-1], operands[:-1] + results
        if epsilon.dtype != _F32_TYPE or epsilon_shape != (1,) or buffers[0][0].rank != 4:
            return "float32 images of rank 4 and a float32[1] epsilon only"
        primitive = batch_norm(pass_, buffers[0][1], ctypes.c_float.from_address(epsilon.data).value, relu)
        workspace = (5 if pass_ == "backward" else 6) if relu else None  # its index among the buffers
        if (primitive is None or tuple(shape for _, shape in buffers) != sum(primitive.shapes, ())
                or any(b.dtype != (_U8_TYPE if i == workspace else _F32_TYPE) for i, (b, _) in enumerate(buffers))):
            return f"oneDNN cannot compute {[shape for _, shape in buffers]}"
        primitive.run(*(b.data for b, _ in buffers))
        return None

    return compute


TARGETS = {pass_: f"mnist_mb_onednn_conv_{pass_}" for pass_ in PASSES}
BATCH_NORM_TARGETS = {pass_: f"mnist_mb_onednn_batch_norm_{pass_}" for pass_ in BATCH_NORM_PASSES}
_HANDLERS = {**{TARGETS[p]: _handler(TARGETS[p], _convolution_pass(p)) for p in PASSES},
             **{BATCH_NORM_TARGETS[p]: _handler(BATCH_NORM_TARGETS[p], _batch_norm_pass(p))
                for p in BATCH_NORM_PASSES}}  # kept alive: XLA holds their addresses


@functools.cache
def _registered() -> bool:
    import jax

    for target, handler in _HANDLERS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(ctypes.cast(handler, ctypes.c_void_p).value),
                                    platform="cpu")
    return True


def _call(pass_: str, first, second, input_shape, kernel_shape):
    """``pass_`` by oneDNN inside a JAX computation on CPU; None (use XLA's) where oneDNN cannot compute it."""
    import jax
    import numpy as np

    primitive = convolution(pass_, tuple(input_shape), tuple(kernel_shape))
    if primitive is None or first.dtype != np.float32 or second.dtype != np.float32:
        return None
    if (tuple(first.shape), tuple(second.shape)) != primitive.shapes[:2]:
        return None
    _registered()
    return jax.ffi.ffi_call(TARGETS[pass_], jax.ShapeDtypeStruct(primitive.shapes[2], np.float32))(first, second)


def conv(inputs, kernel):
    """The VALID, stride-1 convolution of channels-last ``inputs`` by ``kernel`` (kh, kw, c, f), by oneDNN."""
    return _call("forward", inputs, kernel, inputs.shape, kernel.shape)


def conv_input_gradient(upstream, kernel, input_shape: tuple[int, ...]):
    """The inputs' gradient of that convolution, given its output's gradient ``upstream``, by oneDNN."""
    return _call("input_gradient", upstream, kernel, input_shape, kernel.shape)


def conv_weight_gradient(inputs, upstream, kernel_shape: tuple[int, ...]):
    """The kernel's gradient of that convolution of ``inputs``, given its output's gradient ``upstream``."""
    return _call("weight_gradient", inputs, upstream, inputs.shape, kernel_shape)


def batch_norm_forward(inputs, gamma, beta, epsilon: float, relu: bool = False):
    """Batch norm in training of channels-last ``inputs`` (then ReLU, if ``relu``), by oneDNN:
    ``(outputs, mean, variance, workspace)``, the workspace None without the ReLU; None where oneDNN cannot
    compute it."""
    import jax
    import numpy as np

    primitive = batch_norm("forward", tuple(inputs.shape), epsilon, relu)
    if primitive is None or any(a.dtype != np.float32 for a in (inputs, gamma, beta)):
        return None
    if (tuple(inputs.shape), tuple(gamma.shape), tuple(beta.shape)) != primitive.shapes[0]:
        return None
    _registered()
    result_types = [jax.ShapeDtypeStruct(shape, np.float32) for shape in primitive.shapes[1][:3]]
    if relu:
        result_types.append(jax.ShapeDtypeStruct(primitive.shapes[1][3], np.uint8))
    results = jax.ffi.ffi_call(BATCH_NORM_TARGETS["forward"], result_types)(
        inputs, gamma, beta, np.array([primitive.epsilon], np.float32))
    return tuple(results) if relu else (*results, None)


def batch_norm_backward(inputs, upstream, mean, variance, gamma, workspace, epsilon: float):
    """The gradients of inputs, gamma and beta of ``batch_norm_forward``, given its outputs' gradient
    ``upstream`` and its mean, variance and workspace (None: no ReLU); None where oneDNN cannot compute them."""
    import jax
    import numpy as np

    relu = workspace is not None
    primitive = batch_norm("backward", tuple(inputs.shape), epsilon, relu)
    operands = (inputs, upstream, mean, variance, gamma) + ((workspace,) if relu else ())
    if primitive is None or tuple(tuple(a.shape) for a in operands) != primitive.shapes[0]:
        return None
    if any(a.dtype != np.float32 for a in operands[:5]):
        return None
    _registered()
    result_types = [jax.ShapeDtypeStruct(shape, np.float32) for shape in primitive.shapes[1]]
    return tuple(jax.ffi.ffi_call(BATCH_NORM_TARGETS["backward"], result_types)(
        *operands, np.array([primitive.epsilon], np.float32)))
