"""Machine facts: what the benchmarks ran on (the fingerprint), its memory bandwidth, and energy readers.

Every bench file carries the fingerprint, and the report refuses to put numbers from two machines
into one table (`same_machine`). The energy readers (Intel/AMD RAPL through /sys/class/powercap, NVML
on NVIDIA GPUs) each return a measurement or None with the reason, never an invented number.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")
LIBRARIES = ("torch", "transformers", "llama_cpp_python", "gptqmodel", "peft", "trl", "bitsandbytes", "numpy")
CPU_FLAGS = ("avx2", "avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "f16c", "fma")
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_info(cpuinfo: str | None = None) -> dict:
    """CPU model and the SIMD flags that decide which kernels llama.cpp and torch can use."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return {"model": model, "flags": sorted(f for f in CPU_FLAGS if f in flags)}


def native_bf16(device: str = "cpu", cpu_flags: list[str] | None = None) -> bool:
    """Whether bfloat16 arithmetic runs in hardware: a CUDA GPU that has it, a CPU with AVX512_BF16 or AMX.

    Elsewhere torch emulates it, far slower than float32: on a plain AVX2 CPU a QLoRA step took 130 s in
    bf16 against 11.5 s in float32, and gptqmodel's CPU default of bf16 quantized 3.6x slower (docs/measurements.md).
    """
    if device == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return bool(set(cpu_info()["flags"] if cpu_flags is None else cpu_flags) & BF16_CPU_FLAGS)


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpu_info() -> dict | None:
    """Name, memory and driver of the first NVIDIA GPU through NVML; None where there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, or no driver: no NVIDIA GPU to describe
        return None
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        return {
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1),
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
            "count": pynvml.nvmlDeviceGetCount(),
        }
    finally:
        pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def llama_cpp_build() -> str | None:
    """The instruction sets llama.cpp was compiled for: the same version built for AVX2 or for AVX-512
    differs by ~30% in decode speed here, so two builds are two machines."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def llama_programs_build() -> dict | None:
    """What `make install` built llama-server, llama-quantize, ... from (its stamp: sdist version, CMake args)."""
    stamp = Path(sys.prefix) / "llama-tools-build"
    if not stamp.is_file():
        return None
    version, _, cmake_args = stamp.read_text().strip().partition(" ")
    return {"llama_cpp_python_sdist": version, "cmake_args": cmake_args}


def fingerprint() -> dict:
    """The facts that make two benchmark results comparable (or not)."""
    return {
        "cpu": cpu_info(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": ram_gib(),
        "gpu": gpu_info(),
        "os": platform.platform(),
        "versions": library_versions(),
        "llama_cpp_build": llama_cpp_build(),
        "llama_cpp_programs": llama_programs_build(),
    }


def same_machine(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "memory_bandwidth"} == {
        k: v for k, v in b.items() if k != "memory_bandwidth"
    }


def memory_bandwidth(threads: int, mib: int = 256, repeats: int = 5) -> dict:
    """STREAM-style copy bandwidth: each thread copies its own `mib`-MiB array (numpy releases the GIL).

    Bytes moved count read + write (2x the array), as STREAM's copy does. The best of `repeats`
    is the bound (what the memory system can do), the median says how steady the machine was.
    """
    import numpy as np

    n = mib * 2**20 // 8
    sources = [np.random.default_rng(i).random(n) for i in range(threads)]
    targets = [np.empty_like(s) for s in sources]
    for s, t in zip(sources, targets, strict=True):  # touch every page before timing
        np.copyto(t, s)
    rates = []
    for _ in range(repeats):
        workers = [threading.Thread(target=np.copyto, args=(t, s)) for s, t in zip(sources, targets, strict=True)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(2 * n * 8 * threads / (time.perf_counter() - start) / 1e9)
    return {
        "best_gb_per_s": round(max(rates), 2),
        "median_gb_per_s": round(statistics.median(rates), 2),
        "threads": threads,
        "array_mib": mib,
        "repeats": repeats,
        "method": "numpy copy, one array per thread, read + write bytes counted",
    }


# ---- energy ---------------------------------------------------------------------------------------------


class RaplReader:
    """CPU package energy from the RAPL counters under /sys/class/powercap (Intel, and AMD since Linux 5.8).

    `available` is False with `reason` set where the counters are absent or unreadable (a VM, or a
    non-root user: energy_uj is root-only since Linux 5.10). Counts the whole package, not this process.
    """

    def __init__(self, root: Path = POWERCAP):
        self.zones: list[tuple[Path, int]] = []
        self.reason: str | None = None
        if not root.is_dir():
            self.reason = f"{root} does not exist (no RAPL exposed: a VM or a kernel without powercap)"
            return
        packages = sorted(p for p in root.glob("*rapl:*") if p.name.count(":") == 1)  # packages, not subzones
        if not packages:
            self.reason = f"no RAPL package zones under {root}"
            return
        for zone in packages:
            try:
                int((zone / "energy_uj").read_text())
                max_range = int((zone / "max_energy_range_uj").read_text())
            except PermissionError:
                self.reason = f"{zone / 'energy_uj'} is not readable by this user (root only since Linux 5.10)"
                self.zones = []
                return
            except (OSError, ValueError) as err:
                self.reason = f"{zone / 'energy_uj'}: {err}"
                self.zones = []
                return
            self.zones.append((zone, max_range))

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def read(self) -> list[int]:
        return [int((zone / "energy_uj").read_text()) for zone, _ in self.zones]

    def joules_between(self, before: list[int], after: list[int]) -> float:
        total = 0
        for (_, max_range), b, a in zip(self.zones, before, after, strict=True):
            total += a - b if a >= b else a + max_range - b  # the counter wrapped
        return total / 1e6


class NvmlEnergyReader:
    """GPU energy from NVML's total-energy counter (Volta and newer), in joules."""

    def __init__(self, index: int = 0):
        self.reason: str | None = None
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self._nvml = pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
        except Exception as err:  # pynvml.NVMLError and subclasses: no driver, or counter not supported
            self.reason = f"NVML: {err}"
            self.handle = None

    @property
    def available(self) -> bool:
        return self.handle is not None

    def read(self) -> int:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # millijoules

    def joules_between(self, before: int, after: int) -> float:
        return (after - before) / 1e3
