"""KServe's own Python SDK (PyPI `kserve`), its v2 REST client, pointed at a running classifier:
for each photo, the top-5 from `/v2/models/{name}/infer` against what `/v1/classify` answers, for
the image file as BYTES (base64 in the JSON, and raw through the binary tensor data extension)
and for pixels preprocessed here with Pillow, as timm does, as FP32 (`[N, H, W, 3]` in the JSON,
`[N, 3, H, W]` as binary data).

    python tests/kserve_client.py http://127.0.0.1:PORT PHOTO...

Run by tests/classifier_kserve.rs when DEPLOY_TEST_PYTHON names a Python with
`kserve` and Pillow (.ci/run makes one); prints one JSON line with what it saw, exits 1 on a
mismatch.
"""

import asyncio
import base64
import json
import sys
import urllib.request

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from PIL import Image

TOLERANCE = 1e-4


def get_json(url, body=None, content_type=None):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body else {})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def preprocess(path, pre):
    """timm's eval transform: resize the shorter side to floor(size / crop_pct), bicubic; crop the
    centre; scale to [0, 1]; normalise."""
    _, height, width = pre["input_size"]
    image = Image.open(path).convert("RGB")
    scale = int(min(height, width) / pre["crop_pct"])
    w, h = image.size
    size = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - width) / 2.0)), int(round((size[1] - height) / 2.0))
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)).astype(np.float32)


def top5(response):
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    return [
        [(str(label, "utf-8") if isinstance(label, bytes) else str(label), int(index), float(score))
         for label, index, score in zip(labels, indices, scores)]
        for labels, indices, scores in zip(outputs["labels"], outputs["indices"], outputs["scores"])
    ]


def same(got, want, form):
    for g, w in zip(got, want, strict=True):
        if [(label, index) for label, index, _ in g] != [(label, index) for label, index, _ in w] or any(
            abs(a[2] - b[2]) > TOLERANCE for a, b in zip(g, w)
        ):
            sys.exit(f"{form}: got {g}, /v1/classify gave {w}")


async def main(base, photos):
    card = get_json(f"{base}/v1/models")["data"][0]
    pre = card["details"]["preprocessing"]
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    meta = await client._client.get(f"{base}/v2")
    name = get_json(f"{base}/v2/models/{card['id'].rsplit('/', 1)[-1]}")["name"]
    assert await client.is_server_live(base) and await client.is_server_ready(base), "server not ready"
    assert await client.is_model_ready(base, name), "model not ready"

    files = [open(p, "rb").read() for p in photos]
    want = [
        [(p["label"], p["index"], p["score"]) for p in result["predictions"]]
        for f in files
        for result in get_json(f"{base}/v1/classify?top_k=5", f, "application/octet-stream")["results"]
    ]

    async def infer(tensor, data, binary):
        tensor.set_data_from_numpy(data, binary_data=binary)
        request = InferRequest(model_name=name, infer_inputs=[tensor], parameters={"top_k": 5})
        return top5(await client.infer(base, request, model_name=name))

    encoded = np.array([base64.b64encode(f).decode() for f in files], dtype=np.object_)
    same(await infer(InferInput("image", [len(files)], "BYTES"), encoded, False), want, "BYTES, base64 JSON")
    raw = np.array(files, dtype=np.object_)
    same(await infer(InferInput("image", [len(files)], "BYTES"), raw, True), want, "BYTES, binary")

    nhwc = np.stack([preprocess(p, pre) for p in photos])
    same(await infer(InferInput("pixels", list(nhwc.shape), "FP32"), nhwc, False), want, "FP32 NHWC, JSON")
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    same(await infer(InferInput("pixels", list(nchw.shape), "FP32"), nchw, True), want, "FP32 NCHW, binary")

    try:
        await client.infer(base, {"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}]}, model_name=name)
        sys.exit("an INT8 input was accepted")
    except Exception as error:  # the SDK raises httpx.HTTPStatusError with the protocol's message
        refused = str(error)
    assert "INT8" in refused, refused
    await client.close()
    print(json.dumps({"server": meta.json(), "model": name, "photos": len(files), "top5": want[0], "refused": refused}))


asyncio.run(main(sys.argv[1], sys.argv[2:]))
