"""Stage `convert_gguf`: models/merged/ -> models/gguf/F16.gguf with llama.cpp's own converter.

    python -m stages.convert_gguf

The converter is `convert_hf_to_gguf.py` (with its gguf-py) from the llama-cpp-python sdist of the
installed version, so it writes exactly the GGUF that version's llama.cpp reads. `make install`
unpacks it to `<venv>/share/llama.cpp-<version>/`; LLAMA_CPP_CONVERTER overrides the path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import atomic_file, write_json
from ecommerce_slm.gguf_file import describe
from ecommerce_slm.paths import F16_FILE, MERGED_DIR, variant_info
from ecommerce_slm.processes import ends_with_this_process


class ConvertError(ProjectError, RuntimeError):
    pass


def converter_path() -> Path:
    if os.environ.get("LLAMA_CPP_CONVERTER"):
        path = Path(os.environ["LLAMA_CPP_CONVERTER"])
    else:
        import llama_cpp

        path = Path(sys.prefix) / "share" / f"llama.cpp-{llama_cpp.__version__}" / "convert_hf_to_gguf.py"
    if not path.exists():
        raise ConvertError(
            f"{path}: llama.cpp's convert_hf_to_gguf.py not found; `make install` unpacks it from the "
            f"llama-cpp-python sdist (or set LLAMA_CPP_CONVERTER)"
        )
    return path


def convert(model_dir: Path, out_file: Path, outtype: str = "f16") -> float:
    """Run the converter into a temporary file, then move it into place; return the seconds it took."""
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir / 'config.json'}: missing model (run merge)")
    converter = converter_path()
    start = time.perf_counter()
    with atomic_file(out_file) as tmp:
        result = subprocess.run(
            [sys.executable, str(converter), str(model_dir), "--outfile", str(tmp), "--outtype", outtype],
            capture_output=True,
            text=True,
            preexec_fn=ends_with_this_process(),
        )
        if result.returncode != 0:
            raise ConvertError(f"convert_hf_to_gguf.py failed on {model_dir}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


@stage_main("convert_gguf")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    seconds = convert(MERGED_DIR, F16_FILE)
    info = {**describe(F16_FILE, "F16"), "convert_seconds": round(seconds, 1), "converter": str(converter_path())}
    write_json(variant_info("F16"), info)
    return (
        f"{info['parameters'] / 1e6:.1f}M parameters, {info['file_bytes'] / 2**20:.1f} MiB "
        f"in {seconds:.1f} s -> {F16_FILE}"
    )


if __name__ == "__main__":
    sys.exit(main())
