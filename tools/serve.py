"""Serve a variant the pipeline made, OpenAI-compatible, on 127.0.0.1 until Ctrl-C.

    make serve                                    # serve.variant (Q4_K_M) on port 8080
    make serve VARIANT=Q5_K_M PORT=9000
    python -m tools.serve --variant path/to/model.gguf --port 8080

Every answer is one JSON object {"action", "product", "quantity"} with a product from the catalog (see
ecommerce_slm/serving.py for what the front enforces). Settings: params.yaml `serve:`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.serving import ServeConfig, Service
from ecommerce_slm.variants import from_path, resolve


@stage_main("serve")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", help="a GGUF level, F16, or a .gguf path (default: serve.variant)")
    parser.add_argument("--port", type=int, default=8080, help="loopback port (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = ServeConfig.load()
    name = args.variant or cfg.variant
    variant = from_path(name) if name.endswith(".gguf") else resolve(name)
    if variant.engine != "llama_cpp":
        raise ProjectError(f"--variant {name}: llama-server serves GGUF files (a level, F16 or a .gguf path)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Service(variant.location, cfg, args.port) as service:
        print(
            f"serve: {variant.location} at {service.url} (POST /chat/completions, {cfg.parallel} slots); Ctrl-C stops",
            flush=True,
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return "stopped"


if __name__ == "__main__":
    sys.exit(main())
