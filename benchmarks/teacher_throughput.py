"""Teacher throughput: the gemini backend against a local fake Gemini server.

    python benchmarks/teacher_throughput.py [--n 500 --latency 0.2 --concurrency 32]

The fake server runs in its own process and answers every request after a fixed latency.
With N requests, latency L and concurrency C, no client can finish faster than the floor
N x L / C; we print wall / floor (target <= 1.15), then rerun the same batch on the warm cache
and print its wall time and the number of requests it sent (target 0; the server's own call
counter is checked too). The whole path is real: google-genai's async client over HTTP, the
SQLite cache with a write per response, the progress bar off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGET_RATIO = 1.15


def start_fake_server(latency: float, workdir: Path) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "port"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_gemini", "--latency", str(latency), "--port-file", str(port_file)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while not port_file.exists():
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError("the fake Gemini server did not start")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port_file.read_text().strip()}"


def server_calls(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url}/_stats", timeout=10) as reply:
        return int(json.loads(reply.read())["calls"])


def raw_client_wall(base_url: str, n: int, concurrency: int) -> float:
    """Named baseline: a bare aiohttp client posting minimal bodies with the same concurrency
    (no google-genai, no cache). What this machine and this server allow at best."""
    import asyncio

    import aiohttp

    async def run() -> float:
        semaphore = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(trust_env=False) as session:

            async def one(index: int) -> None:
                async with semaphore:
                    async with session.post(
                        f"{base_url}/v1beta/models/baseline:generateContent",
                        json={"contents": [{"role": "user", "parts": [{"text": f"baseline {index}"}]}]},
                        headers={"x-goog-api-key": "baseline"},
                    ) as reply:
                        await reply.read()

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - started

    return asyncio.run(run())


def build_requests(n: int):
    from distill.contracts import MCQItem
    from distill.data.prompts import render_messages
    from distill.llm import Request

    requests = []
    for index in range(n):
        item = MCQItem(
            id=f"bench-{index}",
            paragraph=("조선 후기 실학자들은 토지 제도의 개혁을 통해 농민의 삶을 안정시키고자 하였다. " * 6)
            + f"(문항 {index})",
            question="윗글에 대한 설명으로 가장 적절한 것은?",
            choices=(
                "균전론을 주장하였다",
                "여전론을 주장하였다",
                "한전론을 주장하였다",
                "정전론을 주장하였다",
                "둔전론을 주장하였다",
            ),
            answer=1,
            subject="korean_history",
        )
        requests.append(Request(messages=tuple(render_messages(item)), label=item.id, params=_params()))
    return requests


def _params():
    from distill.llm import GenerationParams

    return GenerationParams(temperature=0.0, max_output_tokens=1024, seed=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--transport", choices=["rest", "sdk"], default="rest", help="gemini backend transport")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare-aiohttp baseline")
    args = parser.parse_args()

    from distill.llm import make_backend

    with tempfile.TemporaryDirectory(prefix="teacher_throughput_") as tmp:
        workdir = Path(tmp)
        server, base_url = start_fake_server(args.latency, workdir)
        try:
            os.environ["GOOGLE_GEMINI_BASE_URL"] = base_url
            os.environ.setdefault("GEMINI_API_KEY", "benchmark-key-not-secret")
            requests = build_requests(args.n)
            cache_path = workdir / "cache.sqlite"

            def run_once():
                backend = make_backend(
                    "gemini",
                    "gemini-2.5-flash",
                    cache=cache_path,
                    concurrency=args.concurrency,
                    timeout_s=30,
                    max_retries=2,
                    transport=args.transport,
                )
                # Client setup (TLS contexts, session) happens once per backend, not per batch:
                # timed on its own.
                started = time.perf_counter()
                backend.connect()
                connect_s = time.perf_counter() - started
                calls_before = server_calls(base_url)
                started = time.perf_counter()
                responses = backend.generate(requests, progress=False)
                wall = time.perf_counter() - started
                backend.close()
                backend.cache.close()
                return wall, backend.usage, server_calls(base_url) - calls_before, responses, connect_s

            cold_wall, cold_usage, cold_calls, cold, connect_s = run_once()
            warm_wall, warm_usage, warm_calls, warm, _ = run_once()
            baseline_wall = None if args.no_baseline else raw_client_wall(base_url, args.n, args.concurrency)
        finally:
            server.terminate()
            server.wait(10)

    failures = sum(1 for r in cold if not r.ok)
    same = [a.text for a in cold] == [b.text for b in warm]
    floor = args.n * args.latency / args.concurrency
    ratio = cold_wall / floor
    print(
        f"teacher throughput: {args.n} requests, latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, transport {args.transport}"
    )
    print(f"  floor N x latency / concurrency   {floor:.3f} s")
    print(f"  client setup (once per backend)   {connect_s:.3f} s")
    print(
        f"  cold run wall                     {cold_wall:.3f} s  ({cold_usage.requests} requests sent, server saw {cold_calls}, {failures} failures)"
    )
    print(f"  wall / floor                      {ratio:.3f}  (target <= {TARGET_RATIO})")
    if baseline_wall is not None:
        print(
            f"  baseline: bare aiohttp client     {baseline_wall:.3f} s  (wall / floor {baseline_wall / floor:.3f}; backend / baseline {cold_wall / baseline_wall:.3f})"
        )
    print(
        f"  warm-cache rerun wall             {warm_wall:.3f} s  ({warm_usage.requests} requests sent, server saw {warm_calls}, {warm_usage.cache_hits} cache hits; target 0 requests)"
    )
    print(f"  rerun answers identical           {same}")
    ok = ratio <= TARGET_RATIO and warm_usage.requests == 0 and warm_calls == 0 and failures == 0 and same
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
