"""Serving throughput: 1, 4, 8 and 16 concurrent chat clients against a real ``python -m dschat.serve`` process.

    python bench/bench_serve.py                                   # SmolLM2-135M (converted default model), all cores
    python bench/bench_serve.py --model ./output --levels 1 8 --requests 2 --max_tokens 32

Each client sends ``--requests`` streamed chat requests one after another (greedy, ``--max_tokens`` each, the
prompts cycling through a fixed list) over httpx, as an app would. Printed per level: aggregate generated tokens/s
(completion tokens from ``usage`` over the level's wall time), its speed-up over one client, p50/p95 time to
first token and total latency, and failed requests. Ends with a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

QUESTIONS = [
    "What does DNA stand for?",
    "What is the square root of 81?",
    "Name three primary colours.",
    "Why is the sky blue?",
    "What is the capital of Japan?",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water at sea level?",
    "Give me a tip for sleeping better.",
    "What is a prime number?",
    "How far away is the Moon?",
    "What do bees make?",
    "What is the largest ocean on Earth?",
    "Explain what a lighthouse does.",
    "What is 12 times 12?",
]
START_TIMEOUT_SECONDS = 300


@dataclass
class Level:
    clients: int
    seconds: float = 0.0
    tokens: int = 0
    failed: int = 0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="Model dir (default: the converted SmolLM2-135M-Instruct)."
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16], help="Concurrent clients.")
    parser.add_argument("--requests", type=int, default=3, help="Requests per client, one after another.")
    parser.add_argument("--max_tokens", type=int, default=64, help="max_tokens per request.")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="Server torch threads (default: half the cores; the clients run on this machine too).",
    )
    parser.add_argument("--port", type=int, default=8931, help="Loopback port for the server.")
    return parser.parse_args(argv)


def start_server(model: str, port: int, threads: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "dschat.serve", "--path", model, "--port", str(port)]
    command += ["--threads", str(threads), "--max_batch_size", "16", "--max_queue", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    sys.exit(f"the server did not start in {START_TIMEOUT_SECONDS} s:\n{log.read_text()[-3000:]}")


def one_request(
    http: httpx.Client, url: str, model_id: str, question: str, max_tokens: int
) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streamed chat request."""
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, tokens = None, 0
    with http.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - start
    return (first if first is not None else latency), latency, tokens


def run_level(url: str, model_id: str, clients: int, requests: int, max_tokens: int) -> Level:
    level, lock = Level(clients), threading.Lock()
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        http = httpx.Client()  # one keep-alive connection per client, as an app holds it
        barrier.wait()
        for r in range(requests):
            question = QUESTIONS[(index * requests + r) % len(QUESTIONS)]
            try:
                ttft, latency, tokens = one_request(http, url, model_id, question, max_tokens)
            except httpx.HTTPError:
                with lock:
                    level.failed += 1
                continue
            with lock:
                level.ttft.append(ttft)
                level.latency.append(latency)
                level.tokens += tokens

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.seconds = time.perf_counter() - start
    return level


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(values, [50, 95])
    return f"{p50:.2f} / {p95:.2f}"


def versions() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, transformers {transformers.__version__}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.model is None:
        from dschat.default_model import default_model_dir

        args.model = str(default_model_dir())
    log = Path(tempfile.mkdtemp(prefix="bench_serve-")) / "server.log"
    server = start_server(args.model, args.port, args.threads, log)
    url = f"http://127.0.0.1:{args.port}"
    try:
        model_id = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        with httpx.Client() as http:
            one_request(http, url, model_id, QUESTIONS[0], 8)  # warm-up
        levels = []
        for clients in args.levels:
            level = run_level(url, model_id, clients, args.requests, args.max_tokens)
            levels.append(level)
            print(
                f"clients={clients} requests={len(level.latency)} failed={level.failed} tokens={level.tokens} "
                f"seconds={level.seconds:.1f} tokens_per_second={level.tokens_per_second:.1f} "
                f"ttft_p50/p95={percentiles(level.ttft)} latency_p50/p95={percentiles(level.latency)}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    base = levels[0].tokens_per_second or 1.0
    print(f"\n{Path(args.model).name}, {versions()}, server threads {args.threads}, ", end="")
    print(f"{args.requests} requests per client, max_tokens {args.max_tokens}, greedy\n")
    print(
        "| clients | requests (failed) | generated tokens/s | vs 1 client | TTFT p50 / p95 s | latency p50 / p95 s |"
    )
    print("|---|---|---|---|---|---|")
    for level in levels:
        print(
            f"| {level.clients} | {len(level.latency)} ({level.failed}) | {level.tokens_per_second:.1f} | "
            f"{level.tokens_per_second / base:.1f}x | {percentiles(level.ttft)} | {percentiles(level.latency)} |"
        )


if __name__ == "__main__":
    main()
