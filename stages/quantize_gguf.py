"""Stage `quantize_gguf@LEVEL`: models/gguf/F16.gguf -> models/gguf/LEVEL.gguf with llama-quantize.

    python -m stages.quantize_gguf Q4_K_M       # one of gguf.levels; reads params.yaml: gguf (threads)
    python -m stages.quantize_gguf Q3_K_M-imat  # weighted by models/gguf/imatrix.gguf (stage imatrix)

Runs llama.cpp's own llama-quantize (built by `make install` from the binding's source), keeps its log
to count the tensors that fell back from the requested k-quant, and writes beside the file a JSON saying
what it really is (see ecommerce_slm/gguf_file.py). Levels ending in -imat, IQ types and the types
llama.cpp refuses without one are weighted by the importance matrix, and refuse to run without it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import atomic_file, write_json
from ecommerce_slm.gguf_file import (
    GgufConfig,
    check_level,
    describe,
    file_type,
    uses_imatrix,
)
from ecommerce_slm.llama_tools import tool
from ecommerce_slm.paths import F16_FILE, IMATRIX_FILE, gguf_file, variant_info
from ecommerce_slm.processes import ends_with_this_process


class QuantizeError(ProjectError, RuntimeError):
    pass


def quantize(source: Path, out_file: Path, level: str, threads: int, imatrix: Path | None = None) -> tuple[float, dict]:
    """Quantize into a temporary file, check and describe it, move it into place; return (seconds, description)."""
    check_level(level, "level")
    if uses_imatrix(level) and (imatrix is None or not imatrix.is_file()):
        raise QuantizeError(
            f"level {level}: needs the importance matrix {imatrix or IMATRIX_FILE}, which is missing "
            f"(run the imatrix stage: dvc repro imatrix)"
        )
    if not source.exists():
        raise FileNotFoundError(f"{source}: missing F16 GGUF (run convert_gguf)")
    weighting = ["--imatrix", str(imatrix)] if uses_imatrix(level) else []
    start = time.perf_counter()
    with atomic_file(out_file) as tmp:
        done = subprocess.run(
            [tool("llama-quantize"), *weighting, str(source), str(tmp), file_type(level), str(threads)],
            capture_output=True,
            text=True,
            errors="replace",
            preexec_fn=ends_with_this_process(),
        )
        log = done.stdout + done.stderr
        if done.returncode != 0:
            raise QuantizeError(
                f"llama-quantize {source} {file_type(level)} exited with {done.returncode}:\n{log[-2000:]}"
            )
        # described once, before the move: reading a file of this vocabulary costs about a second
        info = describe(tmp, level, log, str(imatrix) if weighting else None) | {"path": str(out_file)}
        if info["file_type"] != file_type(level):
            raise QuantizeError(
                f"{out_file}: asked llama.cpp for {file_type(level)}, the file says {info['file_type']}"
            )
    return time.perf_counter() - start, info


@stage_main("quantize_gguf")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", help="a llama.cpp quant type from gguf.levels (Q4_K_M, Q3_K_M-imat, IQ4_XS, ...)")
    level = check_level(parser.parse_args(argv).level, "level")
    cfg = GgufConfig.load()
    imatrix = IMATRIX_FILE if uses_imatrix(level) else None
    seconds, info = quantize(F16_FILE, gguf_file(level), level, cfg.threads, imatrix)
    info |= {"quantize_seconds": round(seconds, 2), "threads": cfg.threads}
    write_json(variant_info(level), info)
    return (
        f"{level}: {info['file_bytes'] / 2**20:.1f} MiB, {info['bits_per_weight']} bits/weight "
        f"(nominal {info['nominal_bits_per_weight']}), {info['fallback_tensors']} tensors fell back -> {gguf_file(level)}"
    )


if __name__ == "__main__":
    sys.exit(main())
