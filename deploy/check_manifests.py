"""Checks deployment manifests against the typed models of the Kubernetes and KServe Python
clients (PyPI `kubernetes`, `kserve`): every field must be one the type has, with a value of its
type (the clients' own loaders drop unknown fields silently, so this walks the types itself),
and the settings that must agree with the server's flags do.

    python deploy/check_manifests.py deploy/knative/*.yaml deploy/kserve/*.yaml

A KServe InferenceService is read as `V1beta1InferenceService`. Knative's Service has no Python
model: its revision template is a Kubernetes `V1PodSpec` plus the fields Knative adds, each
checked for its type, and its autoscaling annotations are checked against Knative's names.
Exits 1 naming every wrong field.
"""

import sys

import kserve.models
import kubernetes.client.models
import yaml

# The fields Knative's RevisionSpec adds to a PodSpec, and the annotations its autoscaler reads.
KNATIVE_REVISION_FIELDS = {"containerConcurrency": int, "timeoutSeconds": int, "responseStartTimeoutSeconds": int, "idleTimeoutSeconds": int}
KNATIVE_AUTOSCALING = {
    "class", "metric", "target", "target-utilization-percentage", "min-scale", "max-scale", "initial-scale",
    "scale-down-delay", "window", "panic-window-percentage", "panic-threshold-percentage",
    "scale-to-zero-pod-retention-period", "activation-scale", "stable-window",
}
PRIMITIVES = {
    "str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "bytes": str,
    # A quantity (`2`, `512Mi`): KServe's clients give it a type of its own.
    "ResourceQuantity": (str, int),
}


def model_class(name):
    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no model class {name}")


def join(path, key):
    return f"{path}.{key}" if path else key


def check(value, type_name, path, errors):
    """Appends to `errors` every field of `value` that type `type_name` does not have, or has
    with another type."""
    # The two clients write containers two ways: `list[T]` / `dict(str, T)` and `List[T]` /
    # `Dict[str, T]`.
    if type_name.startswith(("list[", "List[")):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        for i, item in enumerate(value):
            check(item, type_name[5:-1], f"{path}[{i}]", errors)
    elif type_name.startswith(("dict(", "Dict[")):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return
        item_type = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check(item, item_type, join(path, key), errors)
    elif type_name in PRIMITIVES:
        wanted = PRIMITIVES[type_name]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            errors.append(f"{path}: expected {type_name}, got {value!r}")
    elif type_name == "object":
        pass
    else:
        klass = model_class(type_name)
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a {type_name} mapping, got {value!r}")
            return
        fields = {json_name: klass.openapi_types[attr] for attr, json_name in klass.attribute_map.items()}
        for key, item in value.items():
            if key not in fields:
                errors.append(f"{path}.{key}: {type_name} has no such field")
            else:
                check(item, fields[key], join(path, key), errors)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_server_settings(pod, concurrency, grace_seconds, path, errors):
    """What must agree with the server's flags: the concurrency limit, a stop that outlasts the
    drain, probes on the health routes, resource requests."""
    container = pod["containers"][0]
    env = env_of(container)
    if str(concurrency) != env.get("MAX_CONCURRENCY"):
        errors.append(f"{path}: containerConcurrency {concurrency} is not MAX_CONCURRENCY {env.get('MAX_CONCURRENCY')}")
    shutdown = float(env.get("SHUTDOWN_TIMEOUT", 10))
    if not grace_seconds > shutdown:
        errors.append(f"{path}: a stopping pod gets {grace_seconds} s, not more than SHUTDOWN_TIMEOUT {shutdown} s")
    for probe, route in [("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")]:
        got = container.get(probe, {}).get("httpGet", {}).get("path")
        if got != route:
            errors.append(f"{path}.containers[0].{probe}: asks {got}, not {route}")
    if not container.get("resources", {}).get("requests"):
        errors.append(f"{path}.containers[0].resources.requests: missing")


def check_knative(doc, errors):
    check(doc["metadata"], "V1ObjectMeta", "metadata", errors)
    spec = dict(doc["spec"])
    template = spec.pop("template")
    spec.pop("traffic", None)
    for key in spec:
        errors.append(f"spec.{key}: a Knative Service spec has no such field")
    meta = template.get("metadata", {})
    check(meta, "V1ObjectMeta", "spec.template.metadata", errors)
    annotations = meta.get("annotations", {})
    for key in annotations:
        if key.startswith("autoscaling.knative.dev/") and key.split("/", 1)[1] not in KNATIVE_AUTOSCALING:
            errors.append(f"spec.template.metadata.annotations: {key} is not a Knative autoscaling annotation")
    if annotations.get("autoscaling.knative.dev/min-scale") != "0":
        errors.append("spec.template.metadata.annotations: min-scale must be \"0\" to scale to zero")
    pod = dict(template["spec"])
    for key, wanted in KNATIVE_REVISION_FIELDS.items():
        if key in pod and not isinstance(pod.pop(key), wanted):
            errors.append(f"spec.template.spec.{key}: expected {wanted.__name__}")
    check(pod, "V1PodSpec", "spec.template.spec", errors)
    # Knative gives a stopping pod the revision's timeout.
    revision = template["spec"]
    check_server_settings(revision, revision.get("containerConcurrency"), revision.get("timeoutSeconds", 300), "spec.template.spec", errors)


def check_kserve(doc, errors):
    check(doc, "V1beta1InferenceService", "", errors)
    predictor = doc["spec"]["predictor"]
    if predictor.get("minReplicas") != 0:
        errors.append("spec.predictor.minReplicas: must be 0 to scale to zero")
    check_server_settings(predictor, predictor.get("containerConcurrency"), predictor.get("terminationGracePeriodSeconds", 30), "spec.predictor", errors)


def main(paths):
    failed = False
    for path in paths:
        with open(path) as f:
            doc = yaml.safe_load(f)
        errors = []
        kind = (doc.get("apiVersion", "").split("/")[0], doc.get("kind"))
        if kind == ("serving.knative.dev", "Service"):
            check_knative(doc, errors)
        elif kind == ("serving.kserve.io", "InferenceService"):
            check_kserve(doc, errors)
        else:
            errors.append(f"not a Knative Service or a KServe InferenceService: {kind}")
        for error in errors:
            print(f"{path}: {error}")
        failed |= bool(errors)
        if not errors:
            print(f"{path}: ok ({doc['kind']} {doc['metadata']['name']})")
    sys.exit(1 if failed else 0)


main(sys.argv[1:])
