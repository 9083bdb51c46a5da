"""Stage `hardware`: what machine the benchmarks run on, and its memory bandwidth, measured once.

    python -m stages.hardware            # reads params.yaml: bench.threads

The stage always runs (DVC cannot see hardware), but it rewrites metrics/hardware.json only when the
fingerprint changed, so bench stages rerun on a new machine or a new library version, never merely
because the bandwidth measurement jittered.
"""

from __future__ import annotations

import argparse
import json
import sys

from ecommerce_slm.benchmark import BenchConfig
from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import write_json
from ecommerce_slm.machine import fingerprint, memory_bandwidth, same_machine
from ecommerce_slm.paths import HARDWARE_FILE


@stage_main("hardware")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    threads = BenchConfig.load().threads
    current = fingerprint()
    if HARDWARE_FILE.exists():
        previous = json.loads(HARDWARE_FILE.read_text())
        if same_machine(previous, current) and previous.get("memory_bandwidth", {}).get("threads") == threads:
            return (
                f"same machine as {HARDWARE_FILE}, kept (bandwidth "
                f"{previous['memory_bandwidth']['best_gb_per_s']} GB/s)"
            )
    current["memory_bandwidth"] = memory_bandwidth(threads)
    write_json(HARDWARE_FILE, current)
    return (
        f"{current['cpu']['model']}, {current['usable_cpus']} CPUs, {current['ram_gib']} GiB, "
        f"GPU {current['gpu'] and current['gpu']['name']}; copy bandwidth "
        f"{current['memory_bandwidth']['best_gb_per_s']} GB/s with {threads} threads -> {HARDWARE_FILE}"
    )


if __name__ == "__main__":
    sys.exit(main())
