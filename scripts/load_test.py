#!/usr/bin/env python3
"""HTTP load on loopback with `hey` (Debian: `apt-get install hey`), bounded in time: starts a
service, then runs each concurrency level for a fixed time and prints requests/s, p50/p99
latency, and errors with the 429s counted apart. Standard library only; prints figures,
asserts nothing.

    python scripts/load_test.py classifier --binary target/release/classifier --model DIR --image photo.jpg
    python scripts/load_test.py textgen --binary target/release/textgen --model DIR [--max-tokens 16]

Options: --concurrency 1,8,16,32 --seconds 10 --rounds 1 --extra "--batch-window-ms 2" (flags
for serve). With --rounds N the levels take turns N times (the machine's speed drifts from one
minute to the next), and the ratios to the first level are taken within each round.
"""

import argparse
import json
import re
import shutil
from statistics import median
import subprocess
import sys
import tempfile

from eval_retrieval import start_service


def run_hey(url, concurrency, seconds, content_type, body_path, per_worker_rate=None):
    """Runs `hey` for `seconds` and parses its report; `codes` holds every status's count."""
    command = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", content_type,
               "-D", body_path, "-t", "120", *(["-q", str(per_worker_rate)] if per_worker_rate else []), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    def number(pattern):
        found = re.search(pattern, output)
        return float(found.group(1)) if found else float("nan")
    codes = {int(code): int(count) for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)}
    return {
        "requests_per_second": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": number(r"50%+ in ([\d.]+) secs") * 1e3,
        "p99_ms": number(r"99%+ in ([\d.]+) secs") * 1e3,
        "ok": codes.get(200, 0),
        "429": codes.get(429, 0),
        "other": sum(n for c, n in codes.items() if c not in (200, 429)),
        "transport_errors": sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?:Get|Post)", output, re.M)),
        "codes": codes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=["classifier", "textgen"])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", help="the classifier's request body")
    parser.add_argument("--prompt", default="The quick brown fox")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", default="1,8,16,32")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--extra", default="", help="more flags for `serve`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not shutil.which("hey"):
        print("skipped: `hey` is not installed (Debian: apt-get install hey)")
        return 0
    process, base = start_service(args.binary, args.model, "--max-concurrency", "256", *args.extra.split())
    results = []
    try:
        with tempfile.NamedTemporaryFile(suffix=".body") as body:
            if args.service == "classifier":
                if not args.image:
                    sys.exit("the classifier needs --image")
                body.write(open(args.image, "rb").read())
                url, content_type = f"{base}/v1/classify", "application/octet-stream"
            else:
                body.write(json.dumps({"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0}).encode())
                url, content_type = f"{base}/v1/completions", "application/json"
            body.flush()
            levels = [int(c) for c in args.concurrency.split(",")]
            for round_index, concurrency in ((r, c) for r in range(args.rounds) for c in levels):
                result = {"round": round_index + 1, "concurrency": concurrency,
                          **run_hey(url, concurrency, args.seconds, content_type, body.name)}
                if args.service == "textgen":
                    result["tokens_per_second"] = result["requests_per_second"] * args.max_tokens
                results.append(result)
                print(json.dumps(result) if args.json else
                      (f"round {round_index + 1}, " if args.rounds > 1 else "") + f"concurrency {concurrency:>3}: {result['requests_per_second']:8.2f} requests/s"
                      + (f" ({result['tokens_per_second']:.1f} tokens/s)" if "tokens_per_second" in result else "")
                      + f", p50 {result['p50_ms']:8.1f} ms, p99 {result['p99_ms']:8.1f} ms,"
                      f" {result['ok']} ok, {result['429']} x 429, {result['other']} other", flush=True)
    finally:
        process.terminate()
        process.wait()
    rates = {}  # concurrency -> requests/s per round
    for result in results:
        rates.setdefault(result["concurrency"], []).append(result["requests_per_second"])
    first, *others = list(rates)
    for concurrency in others:
        ratios = [r / b for r, b in zip(rates[concurrency], rates[first])]
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"concurrency {concurrency} / concurrency {first}: {median(ratios):.2f}x the throughput"
              + (f" (median of the rounds: {listed})" if len(ratios) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
