"""What a GGUF file really is, read with gguf-py: tensor types, true bits per weight, fallbacks.

llama.cpp's k-quants pack rows in blocks of 256; a tensor whose rows are not a multiple of 256
(SmolLM2-135M is 576 wide) silently falls back to a legacy type (Q3_K -> Q4_0, Q4_K -> Q5_0, ...),
so a file's real size per weight can be far above the level's nominal one. This module measures it.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import gguf

# The block type a level is named after, whose bits per weight is the level's nominal figure.
MAIN_TYPE = {"F16": "F16", "Q2_K": "Q2_K", "Q2_K_S": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
             "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
             "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q8_0": "Q8_0", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS"}
FALLBACK_LINE = re.compile(r"(\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\) -> falling back to\s+(\w+)")
FALLBACK_TOTAL = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


def type_bits(type_name: str) -> float:
    """Bits per weight of one ggml block type (Q4_K: 4.5, Q8_0: 8.5, F16: 16)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return 8 * size / block


def file_type_name(reader: gguf.GGUFReader) -> str:
    field = reader.fields.get("general.file_type")
    if field is None:
        return "unknown"
    return gguf.LlamaFileType(int(field.parts[-1][0])).name.removeprefix("MOSTLY_")


def describe(path: str | Path, level: str, quantize_log: str = "") -> dict:
    """Describe a GGUF file; `quantize_log` is llama.cpp's own output while writing it (for its fallbacks)."""
    path = Path(path)
    reader = gguf.GGUFReader(path)
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    elements = sum(int(t.n_elements) for t in reader.tensors)
    data_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    fallbacks = collections.Counter(f"{m[3]}->{m[4]}" for m in FALLBACK_LINE.findall(quantize_log))
    total = FALLBACK_TOTAL.search(quantize_log)
    return {
        "variant": level, "path": str(path), "level": level, "file_type": file_type_name(reader),
        "file_bytes": path.stat().st_size, "parameters": elements,
        "bits_per_weight": round(8 * data_bytes / elements, 3),  # what llama.cpp prints as BPW: tensor data only
        "nominal_bits_per_weight": round(type_bits(MAIN_TYPE[level]), 3),
        "tensor_types": dict(sorted(types.items())),
        # llama.cpp's own count; 0 when nothing fell back (it prints no summary line then)
        "fallback_tensors": int(total[1]) if total else 0,
        "fallbacks": dict(sorted(fallbacks.items())),
    }


def chat_template(path: str | Path) -> str | None:
    field = gguf.GGUFReader(path).fields.get("tokenizer.chat_template")
    return None if field is None else bytes(field.parts[-1]).decode("utf-8")
