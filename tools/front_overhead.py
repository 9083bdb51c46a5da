"""What the served front adds to one request: the same requests through it and straight to its llama-server.

    python -m tools.front_overhead --requests 40 --rounds 2 --out docs/front_overhead.json
    python -m tools.front_overhead --nagle ...   # the front as it was before TCP_NODELAY, for comparison

One client, one request at a time: each round sends every request through the front, then straight to
llama-server (or the other way round, in turn). The backend gets exactly the body the front would forward
(serving.checked_request). JSON, not a test: latency on a shared 2-core VM moves between hours.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import read_jsonl, write_json
from ecommerce_slm.llama_tools import LOOPBACK
from ecommerce_slm.machine import cpu_info
from ecommerce_slm.paths import EVAL_FILE
from ecommerce_slm.serving import FrontHandler, ServeConfig, Service, checked_request
from ecommerce_slm.variants import resolve


def block(port: int, bodies: list[bytes]) -> list[float]:
    """Seconds of each request, one at a time over one kept-alive connection (a new one per block:
    llama-server closes a connection idle for 5 s)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
    seconds = []
    try:
        for body in bodies:
            start = time.perf_counter()
            connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise ProjectError(f"front_overhead: HTTP {response.status} from port {port}")
            seconds.append(time.perf_counter() - start)
    finally:
        connection.close()
    return seconds


@stage_main("front_overhead")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="eval requests per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nagle", action="store_true", help="leave Nagle's algorithm on in the front")
    parser.add_argument("--out", type=Path, default=Path("docs/front_overhead.json"))
    args = parser.parse_args(argv)
    cfg = ServeConfig.load()
    variant = resolve(cfg.variant)
    FrontHandler.disable_nagle_algorithm = not args.nagle
    texts = [row["text"] for row in read_jsonl(EVAL_FILE)][: args.requests]
    rounds = []
    with Service(variant.location, cfg) as service:
        ports = {"front": service.front.server_address[1], "backend": service.backend.port}
        bodies = [json.dumps({"messages": [{"role": "user", "content": text}]}).encode() for text in texts]
        sent = {
            "front": bodies,
            "backend": [json.dumps(checked_request(b, service.schema, cfg.max_tokens)).encode() for b in bodies],
        }
        for way in ports:  # warm-up: the first requests pay for loading and allocation
            block(ports[way], sent[way][:5])
        for number in range(args.rounds):
            # each way in its own block, in turn first: a request sent right after the same one the other
            # way would find its whole prompt in llama-server's slot cache (~60 ms less prompt work here)
            order = ["front", "backend"] if number % 2 == 0 else ["backend", "front"]
            medians = {way: 1000 * statistics.median(block(ports[way], sent[way])) for way in order}
            rounds.append(
                {
                    "first": order[0],
                    "front_median_ms": round(medians["front"], 1),
                    "backend_median_ms": round(medians["backend"], 1),
                    "difference_ms": round(medians["front"] - medians["backend"], 1),
                }
            )
    write_json(
        args.out,
        {
            "variant": variant.name,
            "tcp_nodelay": not args.nagle,
            "requests_per_round": len(texts),
            "threads": cfg.threads,
            "cpu": cpu_info(),
            "rounds": rounds,
        },
    )
    return f"front minus backend, ms per round: {[r['difference_ms'] for r in rounds]} -> {args.out}"


if __name__ == "__main__":
    sys.exit(main())
