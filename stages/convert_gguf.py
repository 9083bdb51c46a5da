"""Stage `convert_gguf`: models/merged/ -> models/gguf/F16.gguf with llama.cpp's own converter.

    python -m stages.convert_gguf

The converter is `convert_hf_to_gguf.py` (with its gguf-py) from the llama-cpp-python sdist of the
installed version, so it writes exactly the GGUF that version's llama.cpp reads. `make install`
unpacks it to `<venv>/share/llama.cpp-<version>/`; LLAMA_CPP_CONVERTER overrides the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from stages.files import write_json
from stages.gguf_file import describe

MERGED_DIR = Path("models/merged")
OUT_FILE = Path("models/gguf/F16.gguf")
INFO_FILE = Path("metrics/variants/F16.json")


class ConvertError(RuntimeError):
    pass


def converter_path() -> Path:
    if os.environ.get("LLAMA_CPP_CONVERTER"):
        path = Path(os.environ["LLAMA_CPP_CONVERTER"])
    else:
        import llama_cpp

        path = Path(sys.prefix) / "share" / f"llama.cpp-{llama_cpp.__version__}" / "convert_hf_to_gguf.py"
    if not path.exists():
        raise ConvertError(f"{path}: llama.cpp's convert_hf_to_gguf.py not found; `make install` unpacks it from the "
                           f"llama-cpp-python sdist (or set LLAMA_CPP_CONVERTER)")
    return path


def convert(model_dir: Path, out_file: Path, outtype: str = "f16") -> float:
    """Run the converter into a temporary file, then move it into place; return the seconds it took."""
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir / 'config.json'}: missing model (run merge)")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(converter_path()), str(model_dir), "--outfile", str(tmp),
                             "--outtype", outtype], capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ConvertError(f"convert_hf_to_gguf.py failed on {model_dir}:\n{result.stderr[-3000:]}")
    os.replace(tmp, out_file)
    return time.perf_counter() - start


def main() -> int:
    try:
        seconds = convert(MERGED_DIR, OUT_FILE)
    except (FileNotFoundError, ConvertError) as err:
        print(f"convert_gguf: error: {err}", file=sys.stderr)
        return 1
    info = {**describe(OUT_FILE, "F16"), "convert_seconds": round(seconds, 1), "converter": str(converter_path())}
    write_json(INFO_FILE, info)
    print(f"convert_gguf: {info['parameters'] / 1e6:.1f}M parameters, {info['file_bytes'] / 2**20:.1f} MiB "
          f"in {seconds:.1f} s -> {OUT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
