"""The fingerprint every bench file carries, the bandwidth probe, and the energy readers' null paths."""

import json
import types
from pathlib import Path

from ecommerce_slm.machine import (
    NvmlEnergyReader,
    RaplReader,
    cpu_info,
    fingerprint,
    memory_bandwidth,
    native_bf16,
    same_machine,
)

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000
flags\t\t: fpu sse avx2 fma avx512f amx_int8
"""


def test_fingerprint_describes_this_machine():
    import importlib.metadata
    import os

    fp = fingerprint()
    assert fp["cpu"] == cpu_info(Path("/proc/cpuinfo").read_text())
    assert fp["usable_cpus"] == len(os.sched_getaffinity(0)) and fp["logical_cpus"] == os.cpu_count()
    for lib in ("torch", "transformers", "llama_cpp_python", "gptqmodel"):
        assert fp["versions"][lib] == importlib.metadata.version(lib), lib
    assert json.loads(json.dumps(fp)) == fp  # goes into JSON metrics as is


def test_native_bf16_needs_avx512_bf16_or_amx():
    assert not native_bf16("cpu", ["avx2", "avx512f", "fma"])
    assert native_bf16("cpu", ["avx2", "avx512_bf16"]) and native_bf16("cpu", ["amx_bf16"])


def test_cpu_info_reads_model_and_relevant_flags():
    assert cpu_info(CPUINFO) == {"model": "Test CPU 9000", "flags": ["amx_int8", "avx2", "avx512f", "fma"]}


def test_same_machine_ignores_the_bandwidth_jitter_but_not_versions():
    a = fingerprint()
    b = json.loads(json.dumps(a))
    a["memory_bandwidth"], b["memory_bandwidth"] = {"best_gb_per_s": 40.0}, {"best_gb_per_s": 41.5}
    assert same_machine(a, b)
    b["versions"]["torch"] = "9.9.9"
    assert not same_machine(a, b)


def test_memory_bandwidth_reports_the_best_and_median_of_its_timed_copies(monkeypatch):
    import ecommerce_slm.machine as machine

    clock = iter([0.0, 1.0, 10.0, 10.5, 20.0, 20.25])  # three repeats: 1 s, 0.5 s, 0.25 s per copy
    monkeypatch.setattr(machine, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    bw = memory_bandwidth(threads=2, mib=8, repeats=3)
    moved = 2 * 8 * 2**20 * 2 / 1e9  # read + write, 8 MiB per thread, 2 threads
    assert bw["best_gb_per_s"] == round(moved / 0.25, 2) and bw["median_gb_per_s"] == round(moved / 0.5, 2)


def test_rapl_missing_gives_none_with_the_reason(tmp_path):
    reader = RaplReader(tmp_path / "no-powercap")
    assert not reader.available
    assert "does not exist" in reader.reason
    empty = RaplReader(tmp_path)
    assert not empty.available and "no RAPL package zones" in empty.reason


def test_rapl_reads_package_zones_and_handles_wraparound(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    (tmp_path / "intel-rapl:0:0").mkdir(parents=True)  # a subzone (core): not counted twice
    zone.mkdir(exist_ok=True)
    (zone / "energy_uj").write_text("1000\n")
    (zone / "max_energy_range_uj").write_text("10000\n")
    reader = RaplReader(tmp_path)
    assert reader.available and reader.reason is None
    assert reader.read() == [1000]
    assert reader.joules_between([9_000_000], [9_500_000]) == 0.5
    assert reader.joules_between([9000], [500]) == (500 + 10000 - 9000) / 1e6  # counter wrapped


def test_nvml_without_a_driver_gives_none_with_the_reason(monkeypatch):
    import pynvml

    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)  # what a machine without an NVIDIA driver answers
    reader = NvmlEnergyReader()
    assert not reader.available and reader.reason.startswith("NVML: ")


def test_hardware_stage_keeps_the_file_on_the_same_machine_and_rewrites_it_on_another(tmp_path, monkeypatch, capsys):
    import shutil

    from conftest import ROOT

    from stages.hardware import main

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    recorded = {**fingerprint(), "memory_bandwidth": {"best_gb_per_s": 12.5, "threads": 2}}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "hardware.json").write_text(json.dumps(recorded))
    assert main([]) == 0 and "same machine" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics" / "hardware.json").read_text()) == recorded
    recorded["versions"]["torch"] = "0.0.1"  # another machine (or another torch): measured again
    (tmp_path / "metrics" / "hardware.json").write_text(json.dumps(recorded))
    monkeypatch.setattr("stages.hardware.memory_bandwidth", lambda threads: {"best_gb_per_s": 1.0, "threads": threads})
    assert main([]) == 0
    rewritten = json.loads((tmp_path / "metrics" / "hardware.json").read_text())
    assert rewritten["versions"]["torch"] != "0.0.1" and rewritten["memory_bandwidth"]["best_gb_per_s"] == 1.0
