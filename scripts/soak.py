#!/usr/bin/env python3
"""Soak test on loopback, bounded in time: one service under a mix of traffic at a fixed total
concurrency for `--minutes`, then a verdict. Load comes from `hey` (Debian: apt-get install hey);
the rest from threads here.

  valid      hey, most of the concurrency: a photo (classifier) or a greedy completion (textgen)
  checkers   4 threads sending the same valid requests and comparing each answer with the one a
             lone request got before the load started
  malformed  hey, rate-limited: a body that is not an image, or JSON of the wrong type
  oversized  hey, rate-limited: a body over --max-body-bytes
  cut off    threads that go away mid-way: a streamed completion closed after its first tokens,
             or an upload closed half-sent
  slow       threads that send a request a byte at a time, slower than the header timeout

It prints the answers by kind and status, the resident memory over time (and writes it as CSV
and PNG to --out), and fails (exit 1) on any 5xx, a transport error on valid traffic, an answer
that differs from the lone one, a status a kind should never get, or the service exiting.

    python scripts/soak.py classifier --binary target/release/classifier --model DIR --image photo.jpg
    python scripts/soak.py textgen --binary target/release/textgen --model DIR [--minutes 10] [--out docs]

Needs matplotlib for the PNG (the CSV is written without it).
"""

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

from eval_retrieval import start_service
from hostile_clients import resident_mib
from load_test import run_hey

PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning"]
# What each kind of traffic may be answered; anything else is a failure.
ALLOWED = {
    "valid": {200, 429},
    "checkers": {200, 429},
    "malformed": {400, 415, 422, 429},
    "oversized": {413, 429},
}


def valid_requests(args, base):
    """The valid requests: (url, content type, body) each."""
    if args.service == "classifier":
        return [(f"{base}/v1/classify", "application/octet-stream", open(args.image, "rb").read())]
    return [(f"{base}/v1/completions", "application/json",
             json.dumps({"prompt": p, "max_tokens": args.max_tokens, "temperature": 0}).encode())
            for p in PROMPTS]


def essence(service, body):
    """The part of an answer that must not depend on the load: labels and scores, or the text."""
    answer = json.loads(body)
    if service == "classifier":
        return json.dumps(answer["results"], sort_keys=True)
    return answer["choices"][0]["text"]


def send(url, content_type, body, timeout=120):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def checker(args, requests, lone, deadline, tally, mismatches):
    i = 0
    while time.time() < deadline:
        url, content_type, body = requests[i % len(requests)]
        try:
            status, answer = send(url, content_type, body)
        except OSError:
            tally["checkers", "transport error"] += 1
            continue
        tally["checkers", status] += 1
        if status == 200 and essence(args.service, answer) != lone[i % len(requests)]:
            mismatches.append(answer[:300])
        i += 1


def cut_off(args, port, deadline, tally):
    """A streamed completion closed after its first events, or an upload closed half-sent."""
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                if args.service == "textgen":
                    body = json.dumps({"prompt": PROMPTS[0], "max_tokens": 64, "stream": True}).encode()
                    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    received = b""
                    while received.count(b"data:") < 3:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        received += chunk
                else:
                    photo = open(args.image, "rb").read()
                    conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\n"
                                 + f"Content-Length: {len(photo)}\r\n\r\n".encode() + photo[:len(photo) // 2])
            tally["cut off", "closed by the client"] += 1
        except OSError:
            tally["cut off", "transport error"] += 1


def slow(port, deadline, tally):
    """A request sent a byte every half second: the header timeout must close it."""
    request = b"GET /health HTTP/1.1\r\nHost: soak\r\nX-Padding: " + b"x" * 64 + b"\r\n\r\n"
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                for byte in request:
                    if time.time() > deadline:
                        tally["slow", "still sending at the end"] += 1
                        break
                    conn.sendall(bytes([byte]))
                    time.sleep(0.5)
                else:
                    tally["slow", "sent it all"] += 1
        except OSError:
            tally["slow", "closed by the server"] += 1


def sample_memory(pid, deadline, samples, start):
    while time.time() < deadline + 5:
        try:
            samples.append((time.time() - start, resident_mib(pid)))
        except (OSError, RuntimeError):
            return
        time.sleep(1)


def plot(samples, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is not installed")
        return
    figure, axes = plt.subplots(figsize=(8, 3))
    axes.plot([t / 60 for t, _ in samples], [m for _, m in samples], linewidth=1)
    axes.set_xlabel("minutes")
    axes.set_ylabel("resident MiB")
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=["classifier", "textgen"])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", help="the classifier's valid request")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", default=".", help="folder for soak-<service>.csv and .png")
    parser.add_argument("--extra", default="", help="more flags for `serve`")
    args = parser.parse_args()
    if not shutil.which("hey"):
        print("skipped: `hey` is not installed (Debian: apt-get install hey)")
        return 0
    if args.service == "classifier" and not args.image:
        sys.exit("the classifier needs --image")
    checkers, cut, slow_clients, malformed, oversized = 4, 6, 4, 6, 2
    valid = args.concurrency - checkers - cut - slow_clients - malformed - oversized
    process, base = start_service(args.binary, args.model, *args.extra.split())
    port = int(base.rsplit(":", 1)[1])
    requests = valid_requests(args, base)
    lone = [essence(args.service, send(*r)[1]) for r in requests]
    seconds = int(args.minutes * 60)
    start = time.time()
    deadline = start + seconds
    tally, mismatches, samples = Counter(), [], []
    workers = [threading.Thread(target=sample_memory, args=(process.pid, deadline, samples, start))]
    workers += [threading.Thread(target=checker, args=(args, requests, lone, deadline, tally, mismatches))
                for _ in range(checkers)]
    workers += [threading.Thread(target=cut_off, args=(args, port, deadline, tally)) for _ in range(cut)]
    workers += [threading.Thread(target=slow, args=(port, deadline, tally)) for _ in range(slow_clients)]
    hey_results = {}
    with tempfile.TemporaryDirectory() as folder:
        bodies = {}
        for kind, data in {
            "valid": requests[0][2],
            "malformed": b"\x89PNG not really" if args.service == "classifier" else b'{"prompt": 17}',
            "oversized": os.urandom(25 * 1024 * 1024),
        }.items():
            bodies[kind] = os.path.join(folder, kind)
            with open(bodies[kind], "wb") as f:
                f.write(data)
        content_type = requests[0][1] if args.service == "textgen" else "image/jpeg"
        url = requests[0][0]
        for kind, concurrency, rate in [("valid", valid, None), ("malformed", malformed, 50),
                                        ("oversized", oversized, 1)]:
            workers.append(threading.Thread(target=lambda k=kind, c=concurrency, r=rate: hey_results.__setitem__(
                k, run_hey(url, c, seconds, content_type, bodies[k], r))))
        print(f"{args.service}: {seconds} s at concurrency {args.concurrency} ({valid} valid, {checkers} checking, "
              f"{malformed} malformed, {oversized} oversized, {cut} cut off, {slow_clients} slow)", flush=True)
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    alive = process.poll() is None
    process.terminate()
    process.wait(timeout=30)

    for kind, result in hey_results.items():
        for code, count in result["codes"].items():
            tally[kind, code] += count
        if result["transport_errors"]:
            tally[kind, "transport error"] += result["transport_errors"]
    failures = []
    print("answers by kind and status:")
    for (kind, status), count in sorted(tally.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        print(f"  {kind:<10} {status!s:<22} {count}")
        if isinstance(status, int) and status >= 500:
            failures.append(f"{count} x {status} to {kind}")
        elif kind in ALLOWED and isinstance(status, int) and status not in ALLOWED[kind]:
            failures.append(f"{count} x {status} to {kind}")
        elif kind in ("valid", "checkers") and status == "transport error":
            failures.append(f"{count} transport errors on {kind} requests")
    checked = tally["checkers", 200]
    print(f"valid answers compared with the lone ones: {checked}, different: {len(mismatches)}")
    if mismatches:
        failures.append(f"{len(mismatches)} answers differ from the lone ones, e.g. {mismatches[0]!r}")
    if not alive:
        failures.append("the service exited during the run")
    memory = [m for _, m in samples]
    after_first_minute = [m for t, m in samples if t >= 60] or memory
    print(f"resident MiB: start {memory[0]:.0f}, at 1 min {after_first_minute[0]:.0f}, max {max(memory):.0f}, "
          f"end {memory[-1]:.0f} (end / 1 min: {memory[-1] / after_first_minute[0]:.2f})")
    os.makedirs(args.out, exist_ok=True)
    csv = os.path.join(args.out, f"soak-{args.service}.csv")
    with open(csv, "w") as f:
        f.write("seconds,resident_mib\n" + "".join(f"{t:.1f},{m:.1f}\n" for t, m in samples))
    print(f"wrote {csv}")
    plot(samples, os.path.join(args.out, f"soak-{args.service}.png"),
         f"{args.service}: resident memory, {args.minutes:g} min at concurrency {args.concurrency}")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("passed: no 5xx, no crash, only the statuses each kind may get, every valid answer as alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
