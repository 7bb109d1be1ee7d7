#!/usr/bin/env python3
"""Hostile clients on loopback, bounded in count and time: what a service holds under them.
Starts the service, then prints figures (asserts nothing; the tests check the behaviour):

  bodies     N clients at once, each sending a body just under --max-body-bytes: the server's
             resident memory before, its peak during the burst, after it, and after ordinary
             traffic that follows; the answers by status.
  half-sent  N connections that send a request's headers and one byte of a 100 KB body, and N
             that send half a request line: how long until the server has closed them all, and
             how long an ordinary request took meanwhile.

    python scripts/hostile_clients.py classifier --binary target/release/classifier --model DIR \\
        --image photo.jpg [--clients 150] [--connections 1000] [--extra "--body-timeout 5"]
    python scripts/hostile_clients.py textgen --binary target/release/textgen --model DIR

Standard library only; Linux (reads /proc).
"""

import argparse
import json
import os
import resource
import selectors
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter

from eval_retrieval import start_service


def resident_mib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid):
    """Resets the kernel's peak resident figure (VmHWM) to the current one."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


def request_bytes(host, path, content_type, body, length=None):
    length = len(body) if length is None else length
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def exchange(port, payload, timeout=120):
    """Sends `payload` and answers the status of the reply (0 when the connection failed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            try:
                conn.sendall(payload)
            except OSError:
                pass  # the server answered early and closed; its answer may still be readable
            reply = b""
            while b"\r\n" not in reply:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
            parts = reply.split(b" ", 2)
            return int(parts[1]) if len(parts) > 1 else 0
    except OSError:
        return 0


def endpoint(service):
    """The route each request here goes to, and its body's Content-Type."""
    if service == "classifier":
        return "/v1/classify", "application/octet-stream"
    return "/v1/completions", "application/json"


def ordinary(args, base):
    """One ordinary request (a photo, or a short completion); answers (status, seconds)."""
    path, content_type = endpoint(args.service)
    if args.service == "classifier":
        body = open(args.image, "rb").read()
    else:
        body = json.dumps({"prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0}).encode()
    start = time.perf_counter()
    request = urllib.request.Request(base + path, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - start


def bodies(args, process, base, port):
    path, content_type = endpoint(args.service)
    for _ in range(20):
        ordinary(args, base)
    time.sleep(1)
    before = resident_mib(process.pid)
    reset_peak(process.pid)
    payload = request_bytes("127.0.0.1", path, content_type, os.urandom(args.body_bytes))
    statuses = Counter()
    lock = threading.Lock()

    def client():
        status = exchange(port, payload)
        with lock:
            statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    burst_s = time.perf_counter() - start
    peak = resident_mib(process.pid, "VmHWM")
    time.sleep(2)
    after = resident_mib(process.pid)
    for _ in range(50):
        ordinary(args, base)
    time.sleep(2)
    after_traffic = resident_mib(process.pid)
    print(f"bodies: {args.clients} clients at once, {args.body_bytes:,} bytes each, in {burst_s:.1f} s; "
          f"answers {dict(sorted(statuses.items()))}")
    print(f"  resident MiB: before {before:.0f}, peak {peak:.0f} (+{peak - before:.0f}), "
          f"2 s after {after:.0f} ({after / before:.2f}x), after 50 ordinary requests {after_traffic:.0f} "
          f"({after_traffic / before:.2f}x)")


def half_sent(args, base, port):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    path, content_type = endpoint(args.service)
    kinds = {
        "headers and 1 byte of a 100 KB body": request_bytes("127.0.0.1", path, content_type,
                                                              b"x", length=100_000),
        "half a request line": b"POST /v1/cla",
    }
    for kind, payload in kinds.items():
        selector = selectors.DefaultSelector()
        opened = time.perf_counter()
        refused = 0
        for _ in range(args.connections):
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.sendall(payload)
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
            except OSError:
                refused += 1
        held = len(selector.get_map())
        status, seconds = ordinary(args, base)
        closed_at = []
        deadline = time.perf_counter() + args.wait
        while selector.get_map() and time.perf_counter() < deadline:
            for key, _ in selector.select(timeout=0.5):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    closed_at.append(time.perf_counter() - opened)
        still_open = len(selector.get_map())
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        last = f"{max(closed_at):.1f} s" if closed_at else "-"
        print(f"half-sent ({kind}): {held} connections held ({refused} not opened); an ordinary request "
              f"meanwhile: {status} in {seconds * 1e3:.0f} ms; closed by the server: {len(closed_at)}, "
              f"the last {last} after opening; still open after {args.wait:.0f} s: {still_open}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=["classifier", "textgen"])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", help="the classifier's ordinary request")
    parser.add_argument("--clients", type=int, default=150)
    parser.add_argument("--body-bytes", type=int, default=20_000_000, help="just under the default limit")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=60, help="longest wait for the server to close them")
    parser.add_argument("--only", choices=["bodies", "half-sent"])
    parser.add_argument("--extra", default="", help="more flags for `serve`")
    args = parser.parse_args()
    if args.service == "classifier" and not args.image:
        sys.exit("the classifier needs --image")
    process, base = start_service(args.binary, args.model, *args.extra.split())
    port = int(base.rsplit(":", 1)[1])
    try:
        if args.only in (None, "bodies"):
            bodies(args, process, base, port)
        if args.only in (None, "half-sent"):
            half_sent(args, base, port)
        if process.poll() is not None:
            sys.exit(f"the service exited with {process.returncode}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
