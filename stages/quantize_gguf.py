"""Stage `quantize_gguf@LEVEL`: models/gguf/F16.gguf -> models/gguf/LEVEL.gguf with llama.cpp.

    python -m stages.quantize_gguf Q4_K_M       # one of gguf.levels; threads from params.yaml: gguf

Quantizes through llama-cpp-python's `llama_model_quantize` (llama.cpp's own quantizer, no separate
binary), keeps llama.cpp's log to count the tensors that fell back from the requested k-quant, and
writes beside the file a JSON saying what it really is (see stages.gguf_file).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

from stages.config import GGUF_LEVELS, GgufConfig, ParamError
from stages.files import write_json
from stages.gguf_file import describe, file_type_name

F16_FILE = Path("models/gguf/F16.gguf")


class QuantizeError(RuntimeError):
    pass


def gguf_path(level: str) -> Path:
    return F16_FILE.with_name(f"{level}.gguf")


def info_path(level: str) -> Path:
    return Path("metrics/variants") / f"{level}.json"


def quantize(source: Path, out_file: Path, level: str, threads: int) -> tuple[float, str]:
    """Quantize into a temporary file and move it into place; return (seconds, llama.cpp's log)."""
    import gguf
    import llama_cpp

    if level not in GGUF_LEVELS:
        raise ParamError(f"level: expected one of {', '.join(GGUF_LEVELS)}, got {level!r}")
    if not source.exists():
        raise FileNotFoundError(f"{source}: missing F16 GGUF (run convert_gguf)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{level}")
    params.nthread = threads
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    start = time.perf_counter()
    # llama.cpp reports fallbacks only in its log: collect it through our own log callback
    # (llama-cpp-python's filters warnings once any model was opened with verbose=False)
    chunks: list[str] = []
    collect = llama_cpp.llama_log_callback(lambda level, text, user_data: chunks.append(text.decode("utf-8", "replace")))
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    finally:
        from llama_cpp._logger import llama_log_callback

        llama_cpp.llama_log_set(llama_log_callback, ctypes.c_void_p(0))
    text = "".join(chunks)
    seconds = time.perf_counter() - start
    if status != 0:
        tmp.unlink(missing_ok=True)
        raise QuantizeError(f"llama_model_quantize({source}, {level}) returned {status}:\n{text[-2000:]}")
    written = file_type_name(gguf.GGUFReader(tmp))
    if written != level:
        tmp.unlink(missing_ok=True)
        raise QuantizeError(f"{out_file}: asked llama.cpp for {level}, the file says {written}")
    os.replace(tmp, out_file)
    return seconds, text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m stages.quantize_gguf LEVEL   (e.g. Q4_K_M)", file=sys.stderr)
        return 2
    level = argv[0]
    try:
        cfg = GgufConfig.load()
        seconds, log = quantize(F16_FILE, gguf_path(level), level, cfg.threads)
    except (ParamError, FileNotFoundError, QuantizeError) as err:
        print(f"quantize_gguf: error: {err}", file=sys.stderr)
        return 1
    info = {**describe(gguf_path(level), level, log), "quantize_seconds": round(seconds, 2), "threads": cfg.threads}
    write_json(info_path(level), info)
    print(f"quantize_gguf: {level}: {info['file_bytes'] / 2**20:.1f} MiB, {info['bits_per_weight']} bits/weight "
          f"(nominal {info['nominal_bits_per_weight']}), {info['fallback_tensors']} tensors fell back -> {gguf_path(level)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
