"""oneDNN's convolution weight gradient, called from XLA:CPU as a custom call: for JAX's training step.

On XLA:CPU (jaxlib 0.10) the weight gradients of the model's convolutions run on
Eigen at 60-90 GFLOP/s, and they were most of what kept JAX's training step
behind TensorFlow's, whose oneDNN computes the same gradients at 180-190 GFLOP/s
on the same AVX-512 CPU (conv1, batch 128: 16-18 ms in XLA, 7.1 ms in oneDNN;
``python -m benchmarks.conv_passes``). Every other formulation that XLA can run
(im2col matmuls, per-tap matmuls, slices) stayed at or below XLA's own
(docs/performance.md). So this module hands those gradients to oneDNN itself.

How, with no compiled code of the project's own:

- oneDNN is the ``onednn-cpu-gomp`` wheel's ``libdnnl.so.3`` (the CPU-only
  build with GNU OpenMP), loaded with ``ctypes`` from the files that
  distribution installed, never from a search path. Its C API is stable across
  oneDNN 3.x.
- XLA calls a handler written with ``ctypes.CFUNCTYPE`` through its FFI
  (``jax.ffi``): XLA passes its own buffers, so nothing is copied.
  ``jax.pure_callback`` copied both 11 MB inputs of conv1 into new arrays on
  every call (2.9 ms of an 11 ms call) and is not used.
- The primitive for each shape is created once, when the step is traced; a
  shape that oneDNN cannot compute (or no library) keeps XLA's gradient.

The handler takes the GIL like any Python callback and releases it while oneDNN
runs; one lock keeps oneDNN's calls one at a time, since each already uses every
core through OpenMP and the primitives' memory objects are shared.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import threading
from pathlib import Path

DISTRIBUTION = "onednn-cpu-gomp"
LIBRARY = "libdnnl.so.3"
TARGET = "mnist_mb_onednn_conv_weight_gradient"

# oneDNN 3.x C API values (dnnl_types.h).
_F32, _CPU, _CONVOLUTION_DIRECT, _FORMAT_ANY = 3, 1, 1, 1
_ARG_SRC, _ARG_DST, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 1, 17, 145, 161
_QUERY_IMPL_INFO, _QUERY_DIFF_WEIGHTS_MD = 8, 132
_STREAM_IN_ORDER = 1
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


class WeightGradient:
    """oneDNN's weight gradient of a VALID, stride-1 convolution of channels-last ``inputs`` (n, h, w, c), for
    a kernel (kh, kw, c, f) as Keras stores it: one primitive for one shape, then a reorder from oneDNN's
    blocked layout into the kernel's."""

    def __init__(self, input_shape: tuple[int, ...], kernel_shape: tuple[int, ...]):
        lib, engine, _ = _onednn()
        n, h, w, c = input_shape
        kh, kw, _, f = kernel_shape
        oh, ow = h - kh + 1, w - kw + 1
        self.input_shape, self.kernel_shape = tuple(input_shape), tuple(kernel_shape)
        self.output_shape = (n, oh, ow, f)

        def strided(dims, strides):  # oneDNN's logical (N, C, H, W) / (O, I, H, W) over our physical layouts
            md = ctypes.c_void_p()
            _check(lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), len(dims), _Dims(*dims), _F32,
                                                            _Dims(*strides)), "memory descriptor")
            return md

        src = strided((n, c, h, w), (h * w * c, 1, w * c, c))
        diff_dst = strided((n, f, oh, ow), (oh * ow * f, 1, ow * f, f))
        hwio = strided((f, c, kh, kw), (1, f, kw * c * f, c * f))
        any_weights = ctypes.c_void_p()
        _check(lib.dnnl_memory_desc_create_with_tag(ctypes.byref(any_weights), 4, _Dims(f, c, kh, kw), _F32,
                                                    _FORMAT_ANY), "memory descriptor")
        ones, zeros = _Dims(*[1] * 12), _Dims()
        descriptor, reorder_descriptor = ctypes.c_void_p(), ctypes.c_void_p()
        self._primitives, self._memories = [], []
        try:
            _check(lib.dnnl_convolution_backward_weights_primitive_desc_create(
                ctypes.byref(descriptor), engine, _CONVOLUTION_DIRECT, src, any_weights, None, diff_dst,
                ones, zeros, zeros, zeros, None, None), "convolution weight gradient")
            info = ctypes.c_char_p()
            lib.dnnl_primitive_desc_query(descriptor, _QUERY_IMPL_INFO, 0, ctypes.byref(info))
            self.implementation = (info.value or b"").decode()
            blocked = ctypes.c_void_p(lib.dnnl_primitive_desc_query_md(descriptor, _QUERY_DIFF_WEIGHTS_MD, 0))
            self._convolution = self._primitive(descriptor)
            self._src, self._diff_dst = self._memory(src, None), self._memory(diff_dst, None)
            self._blocked, self._kernel = self._memory(blocked, _ALLOCATE), self._memory(hwio, None)
            _check(lib.dnnl_reorder_primitive_desc_create(ctypes.byref(reorder_descriptor), blocked, engine,
                                                          hwio, engine, None), "reorder")
            self._reorder = self._primitive(reorder_descriptor)
        finally:
            for md in (src, diff_dst, hwio, any_weights):
                lib.dnnl_memory_desc_destroy(md)
            for pd in (descriptor, reorder_descriptor):
                if pd:
                    lib.dnnl_primitive_desc_destroy(pd)
        self._convolution_args = (_ExecArg * 3)(_ExecArg(_ARG_SRC, self._src), _ExecArg(_ARG_DIFF_DST, self._diff_dst),
                                                _ExecArg(_ARG_DIFF_WEIGHTS, self._blocked))
        self._reorder_args = (_ExecArg * 2)(_ExecArg(_ARG_SRC, self._blocked), _ExecArg(_ARG_DST, self._kernel))

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

    def __del__(self):
        onednn = _onednn()
        for primitive in getattr(self, "_primitives", ()):
            onednn[0].dnnl_primitive_destroy(primitive)
        for memory in getattr(self, "_memories", ()):
            onednn[0].dnnl_memory_destroy(memory)

    def run(self, inputs: int, upstream: int, kernel_gradient: int) -> None:
        """Compute into the buffer at address ``kernel_gradient`` from those at ``inputs`` and ``upstream``
        (C-contiguous float32 of this primitive's shapes)."""
        lib, _, stream = _onednn()
        with _LOCK:
            for memory, address in ((self._src, inputs), (self._diff_dst, upstream), (self._kernel, kernel_gradient)):
                _check(lib.dnnl_memory_set_data_handle(memory, ctypes.c_void_p(address)), "data handle")
            _check(lib.dnnl_primitive_execute(self._convolution, stream, 3, self._convolution_args), "execution")
            _check(lib.dnnl_primitive_execute(self._reorder, stream, 2, self._reorder_args), "reorder")
            _check(lib.dnnl_stream_wait(stream), "stream")

    def __call__(self, inputs, upstream):
        """The kernel gradient of numpy ``inputs`` and ``upstream`` gradient (a check, and the tests')."""
        import numpy as np

        inputs = np.ascontiguousarray(inputs, np.float32)
        upstream = np.ascontiguousarray(upstream, np.float32)
        if inputs.shape != self.input_shape or upstream.shape != self.output_shape:
            raise ValueError(f"shapes {inputs.shape}, {upstream.shape}; this primitive computes "
                             f"{self.input_shape}, {self.output_shape}")
        kernel_gradient = np.empty(self.kernel_shape, np.float32)
        self.run(inputs.ctypes.data, upstream.ctypes.data, kernel_gradient.ctypes.data)
        return kernel_gradient


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=32)
def weight_gradient(input_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> WeightGradient | None:
    """The primitive for these shapes, created once; None where oneDNN is missing or cannot compute them."""
    if not available() or len(input_shape) != 4 or len(kernel_shape) != 4 or input_shape[3] != kernel_shape[2]:
        return None
    if min(input_shape[1] - kernel_shape[0], input_shape[2] - kernel_shape[1]) < 0 or 0 in input_shape + kernel_shape:
        return None  # no output pixel, or an empty operand: nothing for oneDNN to compute
    try:
        return WeightGradient(tuple(input_shape), tuple(kernel_shape))
    except OneDnnError:
        return None


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


_EXTENSION_METADATA, _STAGE_EXECUTE, _F32_TYPE, _INVALID_ARGUMENT, _INTERNAL = 1, 3, 11, 3, 13


def _error(frame, code: int, message: str):
    args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message.encode(), code)
    return ctypes.cast(frame.api, ctypes.POINTER(_Api)).contents.error_create(ctypes.byref(args))


def _buffer(pointer) -> tuple[_Buffer, tuple[int, ...]]:
    buffer = ctypes.cast(pointer, ctypes.POINTER(_Buffer)).contents
    return buffer, tuple(buffer.dims[i] for i in range(buffer.rank))


@ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))
def _handler(frame_pointer):
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
        if frame.args.size != 2 or frame.rets.size != 1:
            return _error(frame, _INVALID_ARGUMENT, f"{TARGET}: takes 2 operands and returns 1")
        (inputs, input_shape), (upstream, _), (kernel, kernel_shape) = (
            _buffer(frame.args.items[0]), _buffer(frame.args.items[1]), _buffer(frame.rets.items[0]))
        if any(b.dtype != _F32_TYPE or b.rank != 4 for b in (inputs, upstream, kernel)):
            return _error(frame, _INVALID_ARGUMENT, f"{TARGET}: float32 operands of rank 4 only")
        primitive = weight_gradient(input_shape, kernel_shape)
        if primitive is None:
            return _error(frame, _INVALID_ARGUMENT, f"{TARGET}: oneDNN cannot compute {input_shape} * {kernel_shape}")
        primitive.run(inputs.data, upstream.data, kernel.data)
        return None
    except Exception as error:  # an exception must not cross into XLA: it becomes the step's error
        return _error(frame, _INTERNAL, f"{TARGET}: {type(error).__name__}: {error}")


@functools.cache
def _registered() -> bool:
    import jax

    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(ctypes.cast(_handler, ctypes.c_void_p).value),
                                platform="cpu")
    return True


def conv_weight_gradient(inputs, upstream, kernel_shape: tuple[int, ...]):
    """In a JAX computation on CPU: the kernel gradient of the VALID, stride-1, channels-last convolution of
    ``inputs`` whose output's gradient is ``upstream``, by oneDNN; None (use XLA's) where oneDNN cannot."""
    import jax
    import numpy as np

    if weight_gradient(tuple(inputs.shape), tuple(kernel_shape)) is None or inputs.dtype != np.float32:
        return None
    _registered()
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(tuple(kernel_shape), np.float32))(inputs, upstream)
