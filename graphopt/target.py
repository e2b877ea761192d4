"""Where the model will run: ``cpu``, ``cuda`` or ``trt``, plus what is known of the hardware.

Without an explicit ``--target`` graphopt picks the best target this machine can *really* run,
TensorRT > CUDA > CPU, by probing: a GPU must answer through the CUDA driver, then TensorRT must
import (or onnxruntime's TensorRT provider must load) for ``trt``, or onnxruntime's CUDA provider
must actually load for ``cuda``. Provider names that onnxruntime merely lists are not enough.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
from pathlib import Path
from typing import Literal

TargetKind = Literal["cpu", "cuda", "trt"]
TARGET_KINDS: tuple[TargetKind, ...] = ("cpu", "cuda", "trt")

_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Target:
    """The deployment target that passes read to choose schemes (e.g. int8 signedness)."""

    kind: TargetKind = "cpu"
    gpu: GpuInfo | None = None
    cpu_vnni: bool = False
    auto_detected: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            from graphopt.errors import InputError

            raise InputError(f"unknown target '{self.kind}'; choose one of {', '.join(TARGET_KINDS)}")

    @property
    def providers(self) -> list[str]:
        """onnxruntime providers that run this target, best first."""
        return list(_PROVIDERS[self.kind])

    def describe(self) -> str:
        parts = [self.kind]
        if self.gpu:
            major, minor = self.gpu.compute_capability
            parts.append(f"{self.gpu.name} (sm_{major}{minor})")
        elif self.kind == "cpu":
            parts.append("AVX-512 VNNI" if self.cpu_vnni else "no VNNI")
        if self.auto_detected:
            parts.append("auto-detected")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "gpu": dataclasses.asdict(self.gpu) if self.gpu else None,
            "cpu_vnni": self.cpu_vnni,
            "auto_detected": self.auto_detected,
        }


def make_target(kind: str | None) -> Target:
    """``Target`` for an explicit kind, or the probed best one when ``kind`` is ``None``."""
    if kind is None:
        return detect_target()
    gpus = cuda_gpus() if kind != "cpu" else []
    return Target(kind=kind, gpu=gpus[0] if gpus else None, cpu_vnni=cpu_has_vnni())  # type: ignore[arg-type]


@functools.cache
def detect_target() -> Target:
    """The best target this machine can really run (see the module docstring)."""
    gpus = cuda_gpus()
    vnni = cpu_has_vnni()
    if gpus:
        if importlib.util.find_spec("tensorrt") is not None or ort_provider_loads("TensorrtExecutionProvider"):
            return Target("trt", gpus[0], vnni, auto_detected=True)
        if ort_provider_loads("CUDAExecutionProvider"):
            return Target("cuda", gpus[0], vnni, auto_detected=True)
    return Target("cpu", None, vnni, auto_detected=True)


@functools.cache
def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (fast u8·s8 dot products)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


@functools.cache
def cuda_gpus() -> list[GpuInfo]:
    """GPUs visible through the CUDA driver API (``libcuda``); empty without a driver or GPU.

    Asking the driver is cheap and safe: it never touches TensorRT or allocates GPU memory.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return []
    if cuda.cuInit(0) != 0:
        return []
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    gpus = []
    for index in range(count.value):
        device = ctypes.c_int(0)
        if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
            continue
        name = ctypes.create_string_buffer(256)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        if (cuda.cuDeviceGetName(name, 256, device)
                or cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # COMPUTE_CAPABILITY_MAJOR
                or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)):  # COMPUTE_CAPABILITY_MINOR
            continue  # a device the driver cannot describe is not one engine.json can name
        gpus.append(GpuInfo(name.value.decode(errors="replace"), (major.value, minor.value)))
    return gpus


@functools.cache
def ort_provider_loads(provider: str) -> bool:
    """True when onnxruntime really loads ``provider`` for a one-node model (not just lists it).
    The CUDA and TensorRT providers are not tried without a GPU (they would touch CUDA / TensorRT)."""
    from graphopt.engines.ort import providers_that_load

    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and not cuda_gpus():
        return False

    return provider in providers_that_load([provider, "CPUExecutionProvider"])
