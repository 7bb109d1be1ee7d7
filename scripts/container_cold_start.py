"""Cold start in a container beside the bare binary, same machine, same run: from the start
command to the port open and to the first answer, each over several fresh starts taking turns.

    python scripts/container_cold_start.py classifier --model /path/to/mobilenetv2 --image photo.jpg
    python scripts/container_cold_start.py textgen --model /path/to/gpt2 --runs 10

The container is `<service>:latest` (scripts/container.sh build), run by scripts/container.sh
with the model mounted read-only at /model; the bare binary is target/release/<service>. Reads
ENGINE and ENGINE_ARGS as scripts/container.sh does. Prints medians, ranges and the ratio.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_request(service, port, image):
    if service == "classifier":
        with open(image, "rb") as f:
            data, content_type, path = f.read(), "application/octet-stream", "/v1/classify"
    else:
        data = json.dumps({"prompt": "Hello, my name is", "max_tokens": 1}).encode()
        content_type, path = "application/json", "/v1/completions"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, response.status
        response.read()


def start_once(command, env, service, image, port):
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=False)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit(f"{command[0]} exited with {process.returncode} before opening its port")
                time.sleep(0.002)
        port_open = time.perf_counter() - started
        first_request(service, port, image)
        answered = time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return port_open * 1e3, answered * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=["classifier", "textgen"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", help="the classifier's first photo")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if args.service == "classifier" and not args.image:
        parser.error("--image is needed for the classifier")
    model = os.path.abspath(args.model)
    results = {"container": [], "binary": []}
    for run in range(args.runs + 1):
        for kind in results:
            port = free_port()
            env = dict(os.environ, PORT=str(port))
            if kind == "container":
                command = [os.path.join(ROOT, "scripts/container.sh"), "run", args.service, "-v", f"{model}:/model:ro"]
            else:
                command = [os.path.join(ROOT, "target/release", args.service), "serve", "--host", "127.0.0.1", "--model", model]
            timing = start_once(command, env, args.service, args.image, port)
            if run > 0:  # the first round only warms the page cache
                results[kind].append(timing)
        print(f"round {run}/{args.runs}", end="\r", flush=True)
    print()
    print(f"{args.service}, {args.runs} starts each, turns taken")
    print(f"{'':10} {'port open, ms (range)':>28} {'first answer, ms (range)':>30}")
    medians = {}
    for kind, timings in results.items():
        ports, answers = zip(*timings)
        medians[kind] = statistics.median(answers)
        print(f"{kind:10} {statistics.median(ports):10.1f} ({min(ports):.1f}-{max(ports):.1f}) {'':5}"
              f"{statistics.median(answers):10.1f} ({min(answers):.1f}-{max(answers):.1f})")
    print(f"container / binary, first answer: {medians['container'] / medians['binary']:.2f}")


main()
