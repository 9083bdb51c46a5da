"""Stage `quantize_gguf@LEVEL`: models/gguf/F16.gguf -> models/gguf/LEVEL.gguf with llama.cpp.

    python -m stages.quantize_gguf Q4_K_M       # one of gguf.levels; reads params.yaml: gguf (threads)

Quantizes through llama-cpp-python's `llama_model_quantize` (llama.cpp's own quantizer, no separate
binary), keeps llama.cpp's log to count the tensors that fell back from the requested k-quant, and
writes beside the file a JSON saying what it really is (see ecommerce_slm/gguf_file.py).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import atomic_file, write_json
from ecommerce_slm.gguf_file import GgufConfig, check_level, describe, file_type_name
from ecommerce_slm.paths import F16_FILE, gguf_file, variant_info

GGML_LOG_LEVEL_ERROR = 4  # ggml.h: enum ggml_log_level


class QuantizeError(ProjectError, RuntimeError):
    pass


_quiet_log = None  # module-level: llama.cpp keeps a pointer to the callback after llama_log_set


def quiet_log_callback():
    """A log callback that passes on llama.cpp's errors only, as the binding does with verbose=False."""
    global _quiet_log
    if _quiet_log is None:
        import llama_cpp

        def errors_only(level: int, text: bytes, user_data) -> None:
            if level >= GGML_LOG_LEVEL_ERROR:
                sys.stderr.write(text.decode("utf-8", "replace"))

        _quiet_log = llama_cpp.llama_log_callback(errors_only)
    return _quiet_log


def quantize(source: Path, out_file: Path, level: str, threads: int) -> tuple[float, str]:
    """Quantize into a temporary file and move it into place; return (seconds, llama.cpp's log)."""
    import gguf
    import llama_cpp

    check_level(level, "level")
    if not source.exists():
        raise FileNotFoundError(f"{source}: missing F16 GGUF (run convert_gguf)")
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{level}", None)
    if ftype is None:
        raise QuantizeError(f"level: llama-cpp-python {llama_cpp.__version__} has no LLAMA_FTYPE_MOSTLY_{level}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    start = time.perf_counter()
    # llama.cpp reports fallbacks only in its log: collect it through a callback of ours, and afterwards
    # leave one of ours too (the binding's own default lives in a private module)
    chunks: list[str] = []
    collect = llama_cpp.llama_log_callback(lambda _, text, user_data: chunks.append(text.decode("utf-8", "replace")))
    with atomic_file(out_file) as tmp:
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        finally:
            llama_cpp.llama_log_set(quiet_log_callback(), ctypes.c_void_p(0))
        text = "".join(chunks)
        if status != 0:
            raise QuantizeError(f"llama_model_quantize({source}, {level}) returned {status}:\n{text[-2000:]}")
        written = file_type_name(gguf.GGUFReader(tmp))
        if written != level:
            raise QuantizeError(f"{out_file}: asked llama.cpp for {level}, the file says {written}")
    return time.perf_counter() - start, text


@stage_main("quantize_gguf")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", help="a llama.cpp quant type from gguf.levels (Q4_K_M, ...)")
    level = check_level(parser.parse_args(argv).level, "level")
    cfg = GgufConfig.load()
    seconds, log = quantize(F16_FILE, gguf_file(level), level, cfg.threads)
    info = {**describe(gguf_file(level), level, log), "quantize_seconds": round(seconds, 2), "threads": cfg.threads}
    write_json(variant_info(level), info)
    return (
        f"{level}: {info['file_bytes'] / 2**20:.1f} MiB, {info['bits_per_weight']} bits/weight "
        f"(nominal {info['nominal_bits_per_weight']}), {info['fallback_tensors']} tensors fell back -> {gguf_file(level)}"
    )


if __name__ == "__main__":
    sys.exit(main())
