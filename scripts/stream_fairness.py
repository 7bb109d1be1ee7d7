#!/usr/bin/env python3
"""How much a search or an embeddings request delays the streams running beside it, on
`textgen serve --corpus` over loopback: prints figures, asserts nothing. Standard library only.

    python scripts/stream_fairness.py --binary target/release/textgen --model DIR \
        [--corpus ../shared/data/corpus/news.jsonl] [--max-rerank 200] [--embedding-inputs 256] \
        [--rounds 3]

Each round, in turns: one stream alone (its median gap between tokens and its tokens/s), the
search alone, the embeddings request alone, then each of the two beside a stream that started
first. For the latter, the figures are those of the stream's gaps while the other request ran
(median and largest, the largest over that median and over the median gap of the stream
alone: the "freeze" a user watching the stream would see) and the request's time against its
time alone. Searches go over the loaded corpus with a query of
a few words from an article; embeddings are the first 200 characters of the corpus's articles.
"""

import argparse
import http.client
import json
import pathlib
import statistics
import sys
import threading
import time

from eval_retrieval import DEFAULT_CORPUS, post, start_service

QUERY = "people said government new year"


def stream(base, max_tokens, marks, started=None):
    """Streams a greedy completion; answers the arrival time of each token. `started` is set
    once the first tokens came (so that the other request runs beside a stream in its stride)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=900)
    body = {"prompt": "The", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        sys.exit(f"the stream answered {response.status}: {response.read()[:200]!r}")
    arrivals = []
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"] and chunk["choices"][0].get("finish_reason") is None:
            arrivals.append(time.perf_counter())
            if started is not None and len(arrivals) == 20:
                started.set()
        if marks.get("done") is not None and arrivals[-1] > marks["done"] + 0.5:
            break
    connection.close()
    return arrivals


def gaps_between(arrivals, start, end):
    """Gaps between consecutive tokens from the last one before `start` to the first one after
    `end`, in ms: a stream frozen throughout is one long gap."""
    first = max([i for i, t in enumerate(arrivals) if t < start], default=0)
    last = min([i for i, t in enumerate(arrivals) if t > end], default=len(arrivals) - 1)
    inside = arrivals[first : last + 1]
    return [(b - a) * 1e3 for a, b in zip(inside, inside[1:])]


def beside_a_stream(base, request, max_tokens):
    """Runs `request()` while a stream runs; answers (gaps during it, its time)."""
    marks, started, result = {}, threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(arrivals=stream(base, max_tokens, marks, started)))
    thread.start()
    if not started.wait(120):
        sys.exit("the stream sent no tokens")
    marks["start"] = time.perf_counter()
    request()
    marks["done"] = time.perf_counter()
    thread.join()
    arrivals = result["arrivals"]
    if arrivals[-1] < marks["done"]:
        print(f"  warning: the stream ended before the request did; raise --stream-tokens", file=sys.stderr)
    return gaps_between(arrivals, marks["start"], marks["done"]), marks["done"] - marks["start"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=pathlib.Path, required=True)
    parser.add_argument("--model", type=pathlib.Path, required=True)
    parser.add_argument("--corpus", type=pathlib.Path, default=DEFAULT_CORPUS)
    parser.add_argument("--max-rerank", type=int, default=200)
    parser.add_argument("--embedding-inputs", type=int, default=256)
    parser.add_argument("--stream-tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flags", default="", help="more flags for `serve`, space-separated")
    args = parser.parse_args()
    if not args.corpus.exists():
        sys.exit(f"no corpus at {args.corpus}")
    articles = [json.loads(line)["text"] for line in args.corpus.read_text().splitlines() if line.strip()]
    inputs = [text[:200] for text in (articles * (args.embedding_inputs // len(articles) + 1))[: args.embedding_inputs]]

    process, base = start_service(args.binary, args.model, "--corpus", str(args.corpus), *args.flags.split())
    search_body = {"query": QUERY, "file": args.corpus.name, "max_rerank": args.max_rerank}
    search = lambda: post(f"{base}/v1/search", search_body)
    embed = lambda: post(f"{base}/v1/embeddings", {"input": inputs})
    rows = []
    try:
        search()
        for round in range(1, args.rounds + 1):
            alone = stream(base, 200, {})
            alone_gaps = gaps_between(alone, alone[0], alone[-1])
            figures = {"stream alone median gap ms": statistics.median(alone_gaps),
                       "stream alone tokens/s": (len(alone) - 1) / (alone[-1] - alone[0])}
            for name, request in (("search", search), ("embeddings", embed)):
                started = time.perf_counter()
                request()
                took_alone = time.perf_counter() - started
                gaps, took = beside_a_stream(base, request, args.stream_tokens)
                figures[f"{name} alone s"] = took_alone
                figures[f"{name} beside a stream s"] = took
                figures[f"{name}: time ratio"] = took / took_alone
                figures[f"{name}: stream median gap ms"] = statistics.median(gaps)
                figures[f"{name}: stream largest gap ms"] = max(gaps)
                figures[f"{name}: largest / median"] = max(gaps) / statistics.median(gaps)
                figures[f"{name}: largest / alone median"] = max(gaps) / figures["stream alone median gap ms"]
            print(f"round {round}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()), file=sys.stderr)
            rows.append(figures)
    finally:
        process.terminate()
        process.wait()
    print(f"\nmedians of {len(rows)} rounds (max_rerank {args.max_rerank}, {args.embedding_inputs} inputs):")
    for key in rows[0]:
        print(f"  {key:<36} {statistics.median(r[key] for r in rows):10.3f}")


if __name__ == "__main__":
    main()
