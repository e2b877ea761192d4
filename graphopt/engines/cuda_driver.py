"""The few CUDA driver calls graphopt needs, through ``ctypes`` on ``libcuda`` (no extra package).

Used for device buffers and streams of TensorRT engines (IO with device memory, timing with and
without host↔device copies) and for the device's memory in use. The driver library ships with
every NVIDIA driver, so this works wherever a GPU is usable; :func:`graphopt.target.cuda_gpus` has
already asked it whether one is. Work happens in the device's *primary context*, the one the CUDA
runtime (TensorRT, onnxruntime's CUDA provider) uses, so pointers and streams created here are
valid for them. A context is current per thread, so every call that needs one makes it current
first (:func:`use_device`; cheap): a buffer made in one thread can be used from another.

Every function's ``argtypes`` are declared: without them ctypes passes a Python int as a C ``int``,
which would cut a 64-bit device pointer (``CUdeviceptr``) or host address to 32 bits.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import numpy as np

from graphopt.errors import InputError


class CudaError(InputError):
    """A CUDA driver call failed (no GPU, out of memory, invalid context)."""


@functools.cache
def _driver() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise CudaError("no NVIDIA driver: libcuda.so.1 cannot be loaded") from exc
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
    lib.cuMemcpyHtoDAsync_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.cuMemcpyDtoHAsync_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p]
    lib.cuStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
    lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
    lib.cuStreamDestroy_v2.argtypes = [ctypes.c_void_p]
    lib.cuMemGetInfo_v2.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    lib.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    lib.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
    lib.cuInit.argtypes = [ctypes.c_uint]
    _check(lib, lib.cuInit(0), "cuInit")
    return lib


def _check(lib: ctypes.CDLL, status: int, call: str) -> None:
    if status != 0:
        message = ctypes.c_char_p()
        lib.cuGetErrorString(status, ctypes.byref(message))
        text = message.value.decode(errors="replace") if message.value else f"error {status}"
        raise CudaError(f"CUDA driver call {call} failed: {text}")


@functools.cache
def _primary_context(index: int) -> ctypes.c_void_p:
    """Device ``index``'s primary context, retained once for the process."""
    lib = _driver()
    device = ctypes.c_int(0)
    _check(lib, lib.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
    context = ctypes.c_void_p()
    _check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    return context


def use_device(index: int = 0) -> int:
    """Make device ``index``'s primary context current in this thread; returns its handle."""
    context = _primary_context(index)
    _check(_driver(), _driver().cuCtxSetCurrent(context), "cuCtxSetCurrent")
    return int(context.value or 0)


def memory_in_use(device: int = 0) -> int:
    """Bytes of device memory in use, by every process (``total − free``)."""
    lib = _driver()
    use_device(device)
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    _check(lib, lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
    return int(total.value - free.value)


class Stream:
    """A CUDA stream (its ``handle`` is what TensorRT's ``execute_async_v3`` takes)."""

    def __init__(self) -> None:
        lib = _driver()
        use_device()
        handle = ctypes.c_void_p()
        _check(lib, lib.cuStreamCreate(ctypes.byref(handle), 0), "cuStreamCreate")
        self._handle = handle

    @property
    def handle(self) -> int:
        return int(self._handle.value or 0)

    def synchronize(self) -> None:
        lib = _driver()
        use_device()
        _check(lib, lib.cuStreamSynchronize(self._handle), "cuStreamSynchronize")

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and self._handle.value:
            with contextlib.suppress(Exception):  # at interpreter exit the driver may be gone already
                use_device()  # finalizers run in whichever thread collects
                _driver().cuStreamDestroy_v2(self._handle)
            self._handle = ctypes.c_void_p()


class DeviceBuffer:
    """``nbytes`` of device memory; copies to and from C-contiguous numpy arrays on a stream."""

    def __init__(self, nbytes: int) -> None:
        lib = _driver()
        use_device()
        self.nbytes = max(int(nbytes), 1)
        pointer = ctypes.c_uint64(0)
        _check(lib, lib.cuMemAlloc_v2(ctypes.byref(pointer), self.nbytes), "cuMemAlloc")
        self.pointer = int(pointer.value)

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        """Copy ``array`` in, ordered on ``stream``. From pageable memory the driver stages the bytes before
        returning, so ``array`` may be freed at once; the device copy is complete at the stream's next sync."""
        array = np.ascontiguousarray(array)
        self._fits(array)
        use_device()
        _check(_driver(), _driver().cuMemcpyHtoDAsync_v2(self.pointer, array.ctypes.data, array.nbytes,
                                                         ctypes.c_void_p(stream.handle)), "cuMemcpyHtoDAsync")

    def download(self, array: np.ndarray, stream: Stream) -> None:
        """Copy into ``array`` (C-contiguous, written when the stream is synchronized)."""
        if not array.flags.c_contiguous:
            raise ValueError("download target must be C-contiguous")
        self._fits(array)
        use_device()
        _check(_driver(), _driver().cuMemcpyDtoHAsync_v2(array.ctypes.data, self.pointer, array.nbytes,
                                                         ctypes.c_void_p(stream.handle)), "cuMemcpyDtoHAsync")

    def _fits(self, array: np.ndarray) -> None:
        if array.nbytes > self.nbytes:
            raise ValueError(f"array of {array.nbytes} bytes does not fit a device buffer of {self.nbytes}")

    def __del__(self) -> None:
        if getattr(self, "pointer", 0):
            with contextlib.suppress(Exception):
                use_device()
                _driver().cuMemFree_v2(self.pointer)
            self.pointer = 0
