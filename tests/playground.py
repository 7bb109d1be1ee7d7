"""The playground pages in headless Chromium (Debian's `chromium`, driven by Playwright from
PyPI), as a user would use them, against a running service:

    python tests/playground.py classifier http://127.0.0.1:PORT --photo PHOTO [--screenshot PNG]
    python tests/playground.py textgen http://127.0.0.1:PORT [--screenshot PNG]

classifier: pick a photo in the page and read the bars' labels, which must be `/v1/classify`'s
top-k for the same photo. textgen: stream a completion and stop it after its first tokens
(the page says it stopped, and the server counts a cancelled generation), run a search (the
hits are `/v1/search`'s), compare two texts' embeddings. Run by tests/*_playground.rs when
PLAYGROUND_TEST_PYTHON names a Python with Playwright (.ci/run makes one); prints one JSON line
with what it saw, exits 1 on a mismatch.
"""

import argparse
import json
import sys
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
# As the machine's own check runs it: no sandbox as root, and nothing that calls other sites.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def post(url, body, content_type):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def classifier(page, base, photo):
    page.goto(base + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
    page.fill("#top-k", "3")
    page.set_input_files("#file", photo)
    page.wait_for_selector(".bar")
    labels = page.locator(".bar .label").all_inner_texts()
    with open(photo, "rb") as f:
        want = post(base + "/v1/classify?top_k=3", f.read(), "application/octet-stream")
    expected = [p["label"] for p in want["results"][0]["predictions"]]
    if labels != expected:
        sys.exit(f"the page shows {labels}, /v1/classify answers {expected}")
    status = page.inner_text("#status")
    if "ms round trip" not in status:
        sys.exit(f"no latency shown: {status!r}")
    return {"labels": labels, "status": status}


def cancelled(base):
    with urllib.request.urlopen(base + "/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith("textgen_generations_cancelled_total "):
                return float(line.split()[1])
    return 0.0


def textgen(page, base, stop_after):
    page.goto(base + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('kernels')")
    before = cancelled(base)
    page.fill("#prompt", "The quick brown fox")
    page.fill("#max-tokens", "1000")
    page.fill("#temperature", "0")
    # The tiny test model writes 1,000 tokens in a fraction of a second, faster than a click
    # from outside the page comes: Stop is clicked from within, as the first tokens show. On a
    # loaded machine the last token can still come before the click lands (the stream ends
    # "done"): then the page streams again, five times at most.
    for _ in range(5):
        page.evaluate("""() => new MutationObserver((_, observer) => {
            const text = document.getElementById('completion-text');
            if (text && text.textContent.length >= STOP_AFTER) { document.getElementById('stop').click(); observer.disconnect(); }
        }).observe(document.getElementById('completion'), {childList: true, subtree: true, characterData: true})""".replace("STOP_AFTER", str(stop_after)))
        page.click("#generate")
        page.wait_for_function("(status => status.startsWith('stopped') || status.startsWith('done'))"
                               "(document.getElementById('completion-status').textContent)")
        stopped = page.inner_text("#completion-status")
        if stopped.startswith("stopped"):
            break
    else:
        sys.exit(f"five streams ended before Stop was clicked, the last {stopped!r}")
    tokens = int(stopped.split()[2])
    if not 0 < tokens < 1000:
        sys.exit(f"the stream was not stopped part-way: {stopped!r}")
    # The server counts the generation it stopped when the page went away from the stream.
    page.wait_for_function(
        "fetch('/metrics').then(r => r.text()).then(t => "
        f"Number((/^textgen_generations_cancelled_total ([0-9.]+)$/m.exec(t) || [0, 0])[1]) > {before})"
    )
    streamed = page.inner_text("#completion-text")

    page.fill("#query", "quick brown fox")
    page.click("#search")
    page.wait_for_selector(".hits li")
    hits = page.locator(".hits li").all_inner_texts()
    want = post(base + "/v1/search", json.dumps({"query": "quick brown fox", "max_rerank": 10, "return_metadata": True}).encode(), "application/json")
    if len(hits) != len(want["data"]) or want["data"][0]["text"][:200] not in hits[0]:
        sys.exit(f"the page shows {hits[:2]}, /v1/search answers {want['data'][:2]}")

    page.click("#compare")
    page.wait_for_function("document.getElementById('similarity').textContent.startsWith('cosine')")
    similarity = page.inner_text("#similarity")
    return {"stopped": stopped, "streamed_chars": len(streamed), "hits": len(hits), "first_hit": hits[0][:60], "similarity": similarity}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("service", choices=["classifier", "textgen"])
    parser.add_argument("base")
    parser.add_argument("--photo")
    parser.add_argument("--screenshot")
    parser.add_argument("--stop-after", type=int, default=1, help="characters of the completion before Stop is clicked")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        seen = classifier(page, args.base, args.photo) if args.service == "classifier" else textgen(page, args.base, args.stop_after)
        if errors:
            sys.exit(f"the page's script failed: {errors}")
        if args.screenshot:
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    print(json.dumps(seen))


main()
