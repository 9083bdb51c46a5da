"""The fingerprint every bench file carries, the bandwidth probe, and the energy readers' null paths."""

import json

from ecommerce_slm.machine import NvmlEnergyReader, RaplReader, cpu_info, fingerprint, memory_bandwidth, same_machine

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000
flags\t\t: fpu sse avx2 fma avx512f amx_int8
"""


def test_fingerprint_has_the_fields_that_make_results_comparable():
    fp = fingerprint()
    assert fp["cpu"]["model"]
    assert fp["logical_cpus"] >= fp["usable_cpus"] >= 1
    assert fp["ram_gib"] > 0
    assert "gpu" in fp and "os" in fp
    for lib in ("torch", "transformers", "llama_cpp_python", "gptqmodel"):
        assert fp["versions"][lib], lib
    json.dumps(fp)  # goes into JSON metrics as is


def test_cpu_info_reads_model_and_relevant_flags():
    assert cpu_info(CPUINFO) == {"model": "Test CPU 9000", "flags": ["amx_int8", "avx2", "avx512f", "fma"]}


def test_same_machine_ignores_the_bandwidth_jitter_but_not_versions():
    a = fingerprint()
    b = json.loads(json.dumps(a))
    a["memory_bandwidth"], b["memory_bandwidth"] = {"best_gb_per_s": 40.0}, {"best_gb_per_s": 41.5}
    assert same_machine(a, b)
    b["versions"]["torch"] = "9.9.9"
    assert not same_machine(a, b)


def test_memory_bandwidth_is_a_positive_measurement():
    bw = memory_bandwidth(threads=2, mib=8, repeats=2)
    assert bw["best_gb_per_s"] >= bw["median_gb_per_s"] > 0
    assert bw["threads"] == 2


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


def test_nvml_without_a_gpu_gives_none_with_the_reason():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the NVML counter may well be there")
    reader = NvmlEnergyReader()
    assert not reader.available and reader.reason
