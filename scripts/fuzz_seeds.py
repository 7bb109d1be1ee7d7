#!/usr/bin/env python3
"""Writes the fuzz targets' starting inputs into fuzz/corpus/<target>/ (not committed): a small
photo in every format the classifier takes, the committed test images, request bodies of each
JSON type, multipart bodies, and strings of the tokenizer corpus. `cargo fuzz` grows the corpus
from them.

    python scripts/fuzz_seeds.py        # needs Pillow
"""

import io
import json
import pathlib

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def main():
    image = Image.new("RGB", (8, 6))
    for x in range(8):
        for y in range(6):
            image.putpixel((x, y), (x * 30, y * 40, 128))
    photos = {}
    for fmt in ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        photos[fmt.lower()] = buffer.getvalue()
    for path in sorted((ROOT / "tests" / "fixtures").rglob("*.png")):
        photos[path.stem] = path.read_bytes()
    for name, data in photos.items():
        write("image_intake", name, data)

    boundary = "X"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + photos["png"] + b"\r\n"
    field = f"--{boundary}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n3\r\n".encode()
    write("multipart_intake", "multipart", b"\x00" + part + field + f"--{boundary}--\r\n".encode())
    write("multipart_intake", "json", b"\x02" + json.dumps({"images": ["iVBORw0KGgo="], "top_k": 2}).encode())
    write("multipart_intake", "raw", b"\x03" + photos["png"])

    requests = [
        {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "stop": ["\n", "."],
         "logprobs": 2, "echo": True, "n": 2, "stream": True, "logit_bias": {"50256": -100}, "seed": 1},
        {"prompt": [[464, 2068], [818]], "max_tokens": 0, "echo": True, "logprobs": 0},
        {"input": ["hello world", "a second text"], "encoding_format": "base64"},
        {"input": [[15496, 995]], "dimensions": 768},
        {"query": "largest ocean", "documents": ["the Pacific", "the Atlantic"], "max_rerank": 2,
         "return_metadata": True},
        {"query": "x", "file": "news.jsonl"},
    ]
    for i, request in enumerate(requests):
        write("json_requests", f"request-{i}", json.dumps(request))

    lines = (ROOT / "tests" / "fixtures" / "tokenizer-corpus.jsonl").read_text().splitlines()
    for i, line in enumerate(lines[:64]):
        write("tokenizer_round_trip", f"text-{i}", json.loads(line)["text"])


if __name__ == "__main__":
    main()
