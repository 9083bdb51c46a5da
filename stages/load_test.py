"""Stage `load_test`: the served variant (serve.variant) under concurrent clients, on loopback only.

    python -m stages.load_test            # reads params.yaml: serve -> metrics/serve.json

Starts what `make serve` starts (llama-server behind the front, ecommerce_slm/serving.py) on free
loopback ports. For each count in serve.load_test.clients it sends warm-up requests, then a fixed
number of requests (eval texts, in order) from that many client threads through the openai client,
`repeats` times, and stops everything. Reports requests/s (median and spread over repeats), latency
p50/p95/p99 over every measured request, errors (anything but an answer), answers that are not a
valid cart intent, the speedup of each count over one client, and llama-server's peak RSS (psutil,
sampled every 20 ms), with the thread count and the CPU's instruction sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil

from ecommerce_slm.benchmark import spread
from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.endpoint import NO_KEY
from ecommerce_slm.files import read_jsonl, write_json
from ecommerce_slm.machine import cpu_info
from ecommerce_slm.paths import EVAL_FILE, SERVE_METRICS
from ecommerce_slm.serving import ServeConfig, Service
from ecommerce_slm.task import InvalidRow, validate_row
from ecommerce_slm.variants import resolve


class PeakRss:
    """The highest resident set size of one process, sampled in a background thread."""

    def __init__(self, pid: int, every: float = 0.02):
        self.process, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def one_request(client, text: str, products: set[str] | None) -> tuple[float, str | None, bool]:
    """(seconds, error or None, whether the answer is a valid cart intent)."""
    import openai

    start = time.perf_counter()
    try:
        result = client.chat.completions.create(model="served", messages=[{"role": "user", "content": text}])
        content = result.choices[0].message.content or ""
    except openai.APIError as err:
        return time.perf_counter() - start, f"{type(err).__name__}: {str(err)[:120]}", False
    seconds = time.perf_counter() - start
    try:
        validate_row({"text": text, **json.loads(content)}, products)
        return seconds, None, True
    except (json.JSONDecodeError, TypeError, InvalidRow):
        return seconds, None, False


def load(client, texts: list[str], clients: int, products: set[str] | None) -> tuple[float, list]:
    """Send every text with `clients` threads; (wall seconds, per-request results)."""
    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        results = list(pool.map(lambda text: one_request(client, text, products), texts))
        return time.perf_counter() - start, results


def measure(service: Service, texts: list[str], cfg: ServeConfig) -> dict:
    products = service.products
    import openai

    test = cfg.load_test
    client = openai.OpenAI(base_url=service.url, api_key=NO_KEY, timeout=120, max_retries=0)
    by_clients = {}
    for clients in test.clients:
        load(client, texts[: test.warmup], clients, products)
        rates, latencies, errors, invalid = [], [], [], 0
        for _ in range(test.repeats):
            wall, results = load(client, texts[: test.requests], clients, products)
            rates.append(len(results) / wall)
            latencies += [seconds for seconds, error, _ in results if error is None]
            errors += [error for _, error, _ in results if error is not None]
            invalid += sum(1 for _, error, valid in results if error is None and not valid)
        p50, p95, p99 = (np.percentile(latencies, q) if latencies else None for q in (50, 95, 99))
        by_clients[str(clients)] = {
            "clients": clients,
            "requests": test.requests * test.repeats,
            "requests_per_second": spread(rates),
            "latency_seconds": {"p50": _round(p50), "p95": _round(p95), "p99": _round(p99)},
            "errors": len(errors),
            "first_errors": errors[:3],
            "invalid_answers": invalid,
        }
    single = by_clients.get("1", {}).get("requests_per_second", {}).get("median")
    for row in by_clients.values():
        row["speedup_over_one_client"] = round(row["requests_per_second"]["median"] / single, 2) if single else None
    return by_clients


def _round(value) -> float | None:
    return None if value is None else round(float(value), 3)


@stage_main("load_test")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    cfg = ServeConfig.load()
    variant = resolve(cfg.variant)
    if variant.engine != "llama_cpp":
        raise ProjectError(f"params.yaml: serve.variant: expected a GGUF level or F16, got {cfg.variant!r}")
    texts = [row["text"] for row in read_jsonl(EVAL_FILE)]
    if len(texts) < max(cfg.load_test.requests, cfg.load_test.warmup):
        raise ProjectError(f"{EVAL_FILE}: {len(texts)} rows; serve.load_test.requests needs {cfg.load_test.requests}")
    with Service(variant.location, cfg) as service, PeakRss(service.backend.process.pid) as rss:
        by_clients = measure(service, texts, cfg)
    result = {
        "variant": variant.name,
        "model": variant.location,
        "engine": "llama-server behind the front (ecommerce_slm/serving.py)",
        "threads": cfg.threads,
        "parallel_slots": cfg.parallel,
        "cpu": cpu_info(),
        "server_peak_rss_mib": round(rss.peak / 2**20, 1),
        "by_clients": by_clients,
    }
    write_json(SERVE_METRICS, result)
    summary = ", ".join(
        f"{c} client(s): {r['requests_per_second']['median']} req/s, p95 {r['latency_seconds']['p95']} s, "
        f"{r['errors']} errors"
        for c, r in by_clients.items()
    )
    return f"{variant.name}: {summary}; server peak RSS {result['server_peak_rss_mib']} MiB -> {SERVE_METRICS}"


if __name__ == "__main__":
    sys.exit(main())
