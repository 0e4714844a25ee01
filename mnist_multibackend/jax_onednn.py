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


PASSES = ("forward", "input_gradient", "weight_gradient")


class Convolution:
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


_EXTENSION_METADATA, _STAGE_EXECUTE, _F32_TYPE, _INVALID_ARGUMENT, _INTERNAL = 1, 3, 11, 3, 13


def _error(frame, code: int, message: str):
    args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message.encode(), code)
    return ctypes.cast(frame.api, ctypes.POINTER(_Api)).contents.error_create(ctypes.byref(args))


def _buffer(pointer) -> tuple[_Buffer, tuple[int, ...]]:
    buffer = ctypes.cast(pointer, ctypes.POINTER(_Buffer)).contents
    return buffer, tuple(buffer.dims[i] for i in range(buffer.rank))


def _handler_for(pass_: str):
    target = TARGETS[pass_]

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
            if frame.args.size != 2 or frame.rets.size != 1:
                return _error(frame, _INVALID_ARGUMENT, f"{target}: takes 2 operands and returns 1")
            (first, first_shape), (second, second_shape), (result, result_shape) = (
                _buffer(frame.args.items[0]), _buffer(frame.args.items[1]), _buffer(frame.rets.items[0]))
            if any(b.dtype != _F32_TYPE or b.rank != 4 for b in (first, second, result)):
                return _error(frame, _INVALID_ARGUMENT, f"{target}: float32 operands of rank 4 only")
            input_shape, kernel_shape = {"forward": (first_shape, second_shape),
                                         "input_gradient": (result_shape, second_shape),
                                         "weight_gradient": (first_shape, result_shape)}[pass_]
            primitive = convolution(pass_, input_shape, kernel_shape)
            if primitive is None or primitive.shapes != (first_shape, second_shape, result_shape):
                return _error(frame, _INVALID_ARGUMENT,
                              f"{target}: oneDNN cannot compute {first_shape}, {second_shape} -> {result_shape}")
            primitive.run(first.data, second.data, result.data)
            return None
        except Exception as error:  # an exception must not cross into XLA: it becomes the step's error
            return _error(frame, _INTERNAL, f"{target}: {type(error).__name__}: {error}")

    return handler


TARGETS = {pass_: f"mnist_mb_onednn_conv_{pass_}" for pass_ in PASSES}
_HANDLERS = {pass_: _handler_for(pass_) for pass_ in PASSES}  # kept alive: XLA holds their addresses


@functools.cache
def _registered() -> bool:
    import jax

    for pass_, handler in _HANDLERS.items():
        jax.ffi.register_ffi_target(TARGETS[pass_], jax.ffi.pycapsule(ctypes.cast(handler, ctypes.c_void_p).value),
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
