"""Checks a running service's `/openapi.json`: the document with `openapi-spec-validator`, then
a real answer of every route it describes against the route's schema for that status and
content type (streamed completions: every chunk), plus answers of bad requests against their
error schemas. A route the document has and this script has no request for fails the check,
so a new route must be exercised here.

    python tests/openapi_check.py classifier http://127.0.0.1:PORT PHOTO.png
    python tests/openapi_check.py textgen http://127.0.0.1:PORT

Run by tests/classifier_http.rs and tests/textgen_http.rs when DEPLOY_TEST_PYTHON names a
Python with openapi-spec-validator (.ci/run makes one); prints one JSON line with what it
checked, exits 1 on a mismatch.
"""

import base64
import json
import sys
import urllib.error
import urllib.request

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

service, base = sys.argv[1], sys.argv[2]


def call(method, path, body=None, content_type=None):
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        response = urllib.request.urlopen(request)
    except urllib.error.HTTPError as error:
        response = error
    return response.status, response.headers.get("Content-Type", "").split(";")[0], response.read()


def as_json(value):
    return json.dumps(value).encode()


status, _, raw = call("GET", "/openapi.json")
document = json.loads(raw)
validate(document)


def schema_of(path, method, status, content_type):
    responses = document["paths"][path][method]["responses"]
    response = responses.get(str(status))
    if response is None:
        sys.exit(f"{method.upper()} {path}: status {status} is not in the document")
    content = response.get("content", {})
    if content_type not in content:
        sys.exit(f"{method.upper()} {path} {status}: content type {content_type} is not in the document ({list(content)})")
    return content[content_type].get("schema")


def check_against(schema, instance, where):
    # The schema's references point into the document's components.
    validator = OAS31Validator({**schema, "components": document["components"]})
    try:
        validator.validate(instance)
    except ValidationError as error:
        sys.exit(f"{where}: the answer does not match its schema: {error.message} at {list(error.absolute_path)}")


checked = []


def exchange(route, method, path=None, body=None, content_type=None, expect=200):
    """Sends one request for the documented `route` (at `path`, the route with its parameters
    filled in) and checks the answer against the document."""
    status, answer_type, raw = call(method.upper(), path or route, body, content_type)
    where = f"{method.upper()} {path or route}"
    if status != expect:
        sys.exit(f"{where}: status {status}, expected {expect}: {raw[:300]!r}")
    schema = schema_of(route, method, status, answer_type)
    if schema is None:
        # Documented without a schema: this page, the style sheet, the metrics, the document.
        if not raw:
            sys.exit(f"{where}: an empty answer")
    elif answer_type == "application/json":
        check_against(schema, json.loads(raw), where)
    elif answer_type == "text/event-stream":
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events[-1]
        for event in events[:-1]:
            check_against(schema, json.loads(event), where + " (a chunk)")
    checked.append((method.upper(), route, status))


def common_routes():
    for route in ["/health", "/v2/health/live", "/v2/health/ready", "/v1/models", "/metrics", "/openapi.json", "/", "/playground.css", "/playground.js"]:
        exchange(route, "get")


def classifier():
    photo = open(sys.argv[3], "rb").read()
    for route in ["/v1/classify", "/", "/invocations", "/v1/features"]:
        exchange(route, "post", body=photo, content_type="image/png")
    exchange("/v1/classify", "post", path="/v1/classify?top_k=2", body=as_json({"images": [base64.b64encode(photo).decode()]}), content_type="application/json")
    exchange("/v1/classify", "post", body=b"not an image", content_type="image/png", expect=422)
    exchange("/v1/classify", "post", body=b"x", content_type="text/plain", expect=415)
    exchange("/v2", "get")
    name = json.loads(call("GET", "/v1/models")[2])["data"][0]["id"].rsplit("/", 1)[-1]
    exchange("/v2/models/{name}", "get", path=f"/v2/models/{name}")
    exchange("/v2/models/{name}/ready", "get", path=f"/v2/models/{name}/ready")
    request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(photo).decode()]}]}
    exchange("/v2/models/{name}/infer", "post", path=f"/v2/models/{name}/infer", body=as_json(request), content_type="application/json")
    exchange("/v2/models/{name}/infer", "post", path="/v2/models/another/infer", body=as_json(request), content_type="application/json", expect=404)
    exchange("/v2/models/{name}/infer", "post", path=f"/v2/models/{name}/infer", body=b"{", content_type="application/json", expect=400)


def textgen():
    completion = {"prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    for route in ["/v1/completions", "/", "/invocations"]:
        exchange(route, "post", body=as_json(completion), content_type="application/json")
    exchange("/v1/engines/{engine}/completions", "post", path="/v1/engines/davinci/completions", body=as_json(completion), content_type="application/json")
    streamed = {**completion, "stream": True, "stream_options": {"include_usage": True}}
    exchange("/v1/completions", "post", body=as_json(streamed), content_type="application/json")
    exchange("/v1/completions", "post", body=as_json({"prompt": "x", "temperature": 5}), content_type="application/json", expect=422)
    exchange("/v1/completions", "post", body=b"{", content_type="application/json", expect=400)
    documents = ["The fox jumped over the lazy dog.", "Stock markets rallied.", "A quick brown fox."]
    search = {"query": "quick fox", "documents": documents}
    exchange("/v1/search", "post", body=as_json(search), content_type="application/json")
    exchange("/v1/search", "post", body=as_json({**search, "return_metadata": True}), content_type="application/json")
    exchange("/v1/engines/{engine}/search", "post", path="/v1/engines/ada/search", body=as_json(search), content_type="application/json")
    exchange("/v1/search", "post", body=as_json({"query": "", "documents": documents}), content_type="application/json", expect=422)
    embeddings = {"input": ["A cat.", "A dog."]}
    exchange("/v1/embeddings", "post", body=as_json(embeddings), content_type="application/json")
    exchange("/v1/embeddings", "post", body=as_json({**embeddings, "encoding_format": "base64"}), content_type="application/json")
    exchange("/v1/engines/{engine}/embeddings", "post", path="/v1/engines/ada/embeddings", body=as_json(embeddings), content_type="application/json")
    exchange("/rerank", "post", body=as_json({"query": "quick fox", "texts": documents, "return_text": True}), content_type="application/json")
    exchange("/v1/rerank", "post", body=as_json({"query": "quick fox", "documents": documents, "top_n": 2, "return_documents": True}), content_type="application/json")
    exchange("/v1/rerank", "post", body=as_json({"query": "quick fox", "documents": documents, "top_n": 9}), content_type="application/json", expect=422)
    exchange("/tokenize", "post", body=as_json({"prompt": "Hello world"}), content_type="application/json")
    exchange("/detokenize", "post", body=as_json({"tokens": [15496, 995]}), content_type="application/json")
    exchange("/detokenize", "post", body=as_json({"tokens": [99999]}), content_type="application/json", expect=422)


common_routes()
classifier() if service == "classifier" else textgen()
described = {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in ("get", "post")}
missing = described - {(method, route) for method, route, _ in checked}
if missing:
    sys.exit(f"routes in the document this check never called: {sorted(missing)}")
print(json.dumps({"openapi": document["openapi"], "routes": len(described), "answers_checked": len(checked)}))
