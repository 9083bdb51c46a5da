"""What a GGUF file really is, read with gguf-py: tensor types, true bits per weight, fallbacks.

llama.cpp's k-quants pack rows in blocks of 256; a tensor whose rows are not a multiple of 256
(SmolLM2-135M is 576 wide) silently falls back to a legacy type (Q3_K -> Q4_0, Q4_K -> Q5_0, ...),
so a file's real size per weight can be far above the level's nominal one. This module measures it.

Also here, because every GGUF stage and the report read it: the `gguf:` params section and the quant
levels, derived from llama.cpp's own file-type table (gguf-py's LlamaFileType), not retyped.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import gguf
import numpy as np

from ecommerce_slm.params import ParamError, Section, check, is_pos_int

# llama.cpp refuses these without an importance matrix (llama-quantize: "Please do not use IQ1_S, IQ1_M,
# IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S quantization without an importance matrix"); IQ2_M mixes in IQ2_S.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S"})
# File types that are not a quantization of the F16 file: unquantized, ternary-only and MoE-only types.
NOT_LEVELS = frozenset({"F16", "BF16", "TQ1_0", "TQ2_0", "MXFP4_MOE"})
# The two mixes not named after a block type (llama.cpp builds both mostly from IQ3_S blocks).
MIX_MAIN_TYPE = {"IQ3_XS": "IQ3_S", "IQ3_M": "IQ3_S"}
# A level written with the importance matrix (stage imatrix): Q3_K_M-imat is Q3_K_M weighted by it.
IMATRIX_SUFFIX = "-imat"


def file_types() -> list[str]:
    """Every `general.file_type` llama.cpp knows, by name (Q4_K_M, IQ4_XS, F16, ...)."""
    return [t.name.removeprefix("MOSTLY_") for t in gguf.LlamaFileType if t.name.startswith("MOSTLY_")]


def quant_levels() -> tuple[str, ...]:
    """The file types the quantize_gguf stage can write from the F16 file (some only with the imatrix)."""
    return tuple(t for t in file_types() if t not in NOT_LEVELS)


def file_type(level: str) -> str:
    """The llama.cpp file type a level writes: Q3_K_M-imat -> Q3_K_M."""
    return level.removesuffix(IMATRIX_SUFFIX)


def uses_imatrix(level: str) -> bool:
    """IQ types and the types llama.cpp refuses without one are always written with the importance matrix."""
    return level.endswith(IMATRIX_SUFFIX) or file_type(level).startswith("IQ") or level in NEEDS_IMATRIX


def normalize_level(name: str) -> str:
    """A level as the project spells it, from any case: q4_k_m-IMAT -> Q4_K_M-imat."""
    stem, dash, rest = name.partition("-")
    return stem.upper() + (IMATRIX_SUFFIX if dash and rest.lower() == IMATRIX_SUFFIX[1:] else dash + rest.upper())


def main_type(level: str) -> str:
    """The block type a level is named after (Q3_K_M -> Q3_K), whose bits per weight is its nominal figure."""
    level = file_type(level)
    types = gguf.GGMLQuantizationType.__members__
    if level in types:
        return level
    if level in MIX_MAIN_TYPE:
        return MIX_MAIN_TYPE[level]
    stem = level.rsplit("_", 1)[0]  # Q4_K_M -> Q4_K
    if stem in types:
        return stem
    raise ParamError(f"{level}: no GGML block type for this level")


def check_level(level: str, key: str = "gguf.levels") -> str:
    """`level` if quantize_gguf can write it, else a ParamError naming `key` and what is possible."""
    expected = (
        f"a llama.cpp quant type ({', '.join(quant_levels())}), optionally with {IMATRIX_SUFFIX} "
        f"(weighted by the importance matrix; IQ types always are)"
    )
    if not isinstance(level, str) or file_type(level) not in quant_levels():
        raise ParamError(f"{key}: expected {expected}, got {level!r}")
    if level.endswith(IMATRIX_SUFFIX) and (file_type(level).startswith("IQ") or file_type(level) in NEEDS_IMATRIX):
        raise ParamError(f"{key}: {file_type(level)} always uses the importance matrix; write {file_type(level)}")
    return level


@dataclass
class GgufConfig(Section):
    """`gguf:` the merged model converted to GGUF F16 by llama.cpp's converter, then one file per level.

    Read by quantize_gguf (threads) and report (levels); dvc.yaml expands eval_gguf, bench_gguf and
    quantize_gguf over `levels`.
    """

    SECTION: ClassVar[str] = "gguf"
    levels: list = field(default_factory=lambda: ["Q3_K_M", "Q3_K_M-imat", "IQ4_XS", "Q4_K_M", "Q5_K_M", "Q8_0"])
    threads: int = 2
    imatrix_rows: int = 300  # training requests (prompt + answer) the importance matrix is computed over
    imatrix_context: int = 512  # tokens per chunk llama-imatrix evaluates

    def __post_init__(self):
        check(len(self.levels) > 0, "levels", "a non-empty list of llama.cpp quant types", self.levels)
        for i, level in enumerate(self.levels):
            check(isinstance(level, str), f"levels[{i}]", "a llama.cpp quant type name", level)
            try:
                check_level(level, f"levels[{i}]")
            except ParamError as err:
                raise ParamError(str(err)) from None
        check(len(set(self.levels)) == len(self.levels), "levels", "no level listed twice", self.levels)
        for name in ("threads", "imatrix_rows", "imatrix_context"):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))


FALLBACK_LINE = re.compile(
    r"(\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\) -> falling back to\s+(\w+)"
)
FALLBACK_TOTAL = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


def type_bits(type_name: str) -> float:
    """Bits per weight of one ggml block type (Q4_K: 4.5, Q8_0: 8.5, F16: 16)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return 8 * size / block


class GgufReader(gguf.GGUFReader):
    """gguf-py's reader over a plain ndarray view of its memory map: the same fields and tensors, 3x faster.

    Every slice of an np.memmap is itself a memmap (whose __array_finalize__ costs microseconds), and the
    reader slices once per token and merge of the 49k vocabulary: ~4 s per read of a SmolLM2 file.
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, mapped: np.ndarray) -> None:  # the view keeps the map (and the file) open
        self._plain_data = mapped.view(np.ndarray)


def file_type_name(reader: gguf.GGUFReader) -> str:
    field = reader.fields.get("general.file_type")
    if field is None:
        return "unknown"
    return gguf.LlamaFileType(int(field.parts[-1][0])).name.removeprefix("MOSTLY_")


def describe(path: str | Path, level: str, quantize_log: str = "", imatrix: str | None = None) -> dict:
    """Describe a GGUF file; `quantize_log` is llama.cpp's own output while writing it (for its fallbacks)."""
    path = Path(path)
    reader = GgufReader(path)
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    elements = sum(int(t.n_elements) for t in reader.tensors)
    data_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    fallbacks = collections.Counter(f"{m[3]}->{m[4]}" for m in FALLBACK_LINE.findall(quantize_log))
    total = FALLBACK_TOTAL.search(quantize_log)
    return {
        "variant": level,
        "path": str(path),
        "level": level,
        "file_type": file_type_name(reader),
        "file_bytes": path.stat().st_size,
        "parameters": elements,
        "bits_per_weight": round(8 * data_bytes / elements, 3),  # what llama.cpp prints as BPW: tensor data only
        "nominal_bits_per_weight": round(type_bits(main_type(level)), 3),
        "imatrix": imatrix,  # the importance matrix file it was weighted by, if any
        "tensor_types": dict(sorted(types.items())),
        # llama.cpp's own count; 0 when nothing fell back (it prints no summary line then)
        "fallback_tensors": int(total[1]) if total else 0,
        "fallbacks": dict(sorted(fallbacks.items())),
    }


def chat_template(path: str | Path) -> str | None:
    field = GgufReader(path).fields.get("tokenizer.chat_template")
    return None if field is None else bytes(field.parts[-1]).decode("utf-8")
