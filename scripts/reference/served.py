"""Asks a running `classifier serve` about a photo and compares its answer with a reference's."""

import json
import urllib.request


def classify(url, path, top_k):
    """[(label, probability)] best first, for the raw bytes of `path` POSTed to `url`."""
    request = urllib.request.Request(
        f"{url}/v1/classify?top_k={top_k}",
        data=path.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request) as response:
        return [(p["label"], p["score"]) for p in json.load(response)["results"][0]["predictions"]]


class Comparison:
    """Prints each photo's two answers and keeps the worst difference."""

    def __init__(self, reference_name, tolerance):
        self.reference_name, self.tolerance = reference_name, tolerance
        self.worst, self.failures, self.count = 0.0, 0, 0

    def add(self, name, reference, ours):
        same = [r[0] for r in reference] == [o[0] for o in ours]
        diff = max(abs(r[1] - o[1]) for r, o in zip(reference, ours))
        self.worst = max(self.worst, diff)
        self.failures += (not same) or diff > self.tolerance
        self.count += 1
        fmt = lambda top: ", ".join(f"{n} {p:.4f}" for n, p in top)
        width = max(len(self.reference_name), 4)
        print(f"{name}\n  {self.reference_name:<{width}}: {fmt(reference)}\n  {'ours':<{width}}: {fmt(ours)}")
        print(f"  same top-{len(reference)}: {same}, max |dp| = {diff:.2e}")

    def finish(self):
        print(f"{self.count} photos, {self.failures} mismatches, largest probability difference {self.worst:.2e}")
        return 1 if self.failures else 0
