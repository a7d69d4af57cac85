"""deploy/kubernetes/, checked offline: no cluster runs here.

- Core kinds (Deployment, Service, HorizontalPodAutoscaler, ConfigMap) are
  validated against the Kubernetes OpenAPI schemas bundled in the PyPI package
  kubernetes-validate (strict: unknown fields fail), and a mutated copy is
  shown to fail, so the validator is not a no-op.
- The Inference Extension's InferencePool, the Gateway API's HTTPRoute and the
  Kustomization are checked structurally: apiVersion, kind, the fields their
  v1 APIs require, and their references to each other.
- Everything a manifest names is checked against the real binary: the
  container's flags appear in `slimserve serve --help` and the server starts
  with them (model, address and sizes swapped for test values); the probe and
  scrape paths answer 200; the ports agree; the metric the autoscaler's adapter
  rule reads and the ones the endpoint picker reads exist in /metrics; the
  termination grace period outlasts preStop + --shutdown-timeout.
"""
import re
import subprocess
from pathlib import Path

import pytest

from conftest import Server, request, slimserve_bin

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
CORE = {("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"),
        ("autoscaling/v2", "HorizontalPodAutoscaler")}
# What the endpoint picker reads with no configuration (model server protocol).
EPP_METRICS = ["vllm:num_requests_waiting", "vllm:num_requests_running",
               "vllm:kv_cache_usage_perc", "vllm:cache_config_info"]


def load_docs():
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def by_kind(kind):
    found = [d for _, d in load_docs() if d.get("kind") == kind]
    assert found, f"no {kind} in {K8S}"
    return found


def deployment():
    (dep,) = by_kind("Deployment")
    return dep


def server_container(dep):
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "slimserve"]
    return c


def flags_of(args):
    """['--a=1', '--b', '2', '--c'] -> {'a': '1', 'b': '2', 'c': None}"""
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        assert a.startswith("--"), f"not a flag: {a}"
        name, eq, val = a[2:].partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            val, i = args[i + 1], i + 1
        out[name] = val if (eq or val) else None
        i += 1
    return out


def help_flags():
    p = subprocess.run([slimserve_bin(), "serve", "--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    text = p.stdout.decode()
    flags = set(re.findall(r"^\s+--([a-z][a-z0-9-]*)", text, re.M))
    assert "model" in flags and "port" in flags, text
    return flags


# ---------------------------------------------------------------- schemas

def test_core_kinds_validate():
    kv = pytest.importorskip("kubernetes_validate")
    seen = set()
    for name, doc in load_docs():
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in CORE:
            continue
        seen.add(key[1])
        try:
            kv.validate(doc, kv.latest_version(), strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {e}")
    assert seen == {k for _, k in CORE}, seen


def test_validator_rejects_mistakes():
    """The same validator fails a misspelt field and a wrong type."""
    kv = pytest.importorskip("kubernetes_validate")
    import copy
    dep = deployment()
    bad = copy.deepcopy(dep)
    server_container(bad)["readinesProbe"] = server_container(bad).pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_every_document_is_known():
    known = CORE | {("inference.networking.k8s.io/v1", "InferencePool"),
                    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
                    ("kustomize.config.k8s.io/v1beta1", "Kustomization")}
    for name, doc in load_docs():
        assert (doc.get("apiVersion"), doc.get("kind")) in known, (name, doc.get("kind"))
        if doc["kind"] != "Kustomization":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name


def test_kustomization_lists_every_file():
    (k,) = by_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(files)


def test_inference_pool_structure():
    """InferencePool (inference.networking.k8s.io/v1): spec.selector.matchLabels,
    spec.targetPorts[].number and spec.endpointPickerRef.name are required; the
    selector must pick the Deployment's pods and the port be the server's."""
    (pool,) = by_kind("InferencePool")
    spec = pool["spec"]
    assert set(spec) <= {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}, spec
    labels = spec["selector"]["matchLabels"]
    assert isinstance(labels, dict) and labels
    dep = deployment()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in labels.items()), (labels, pod_labels)
    ports = spec["targetPorts"]
    assert isinstance(ports, list) and 1 <= len(ports) <= 8
    container_ports = {p["containerPort"] for p in server_container(dep)["ports"]}
    for p in ports:
        assert set(p) == {"number"} and isinstance(p["number"], int), p
        assert p["number"] in container_ports, (p, container_ports)
    epp = spec["endpointPickerRef"]
    assert set(epp) <= {"group", "kind", "name", "port", "failureMode"}, epp
    assert isinstance(epp["name"], str) and epp["name"]
    # the port is required when the picker is a Service (the default kind)
    if epp.get("kind", "Service") == "Service":
        assert set(epp["port"]) == {"number"} and 1 <= epp["port"]["number"] <= 65535
    assert epp.get("failureMode", "FailClose") in ("FailOpen", "FailClose")


def test_http_route_structure():
    (route,) = by_kind("HTTPRoute")
    spec = route["spec"]
    assert spec["parentRefs"] and all(r["name"] for r in spec["parentRefs"])
    (pool,) = by_kind("InferencePool")
    refs = [b for rule in spec["rules"] for b in rule["backendRefs"]]
    assert refs
    for b in refs:
        assert b == {"group": "inference.networking.k8s.io", "kind": "InferencePool",
                     "name": pool["metadata"]["name"]}, b
    for rule in spec["rules"]:
        for m in rule.get("matches", []):
            assert m["path"]["type"] in ("Exact", "PathPrefix", "RegularExpression")
            # the prefix covers the OpenAI routes the server has
            assert "/v1/completions".startswith(m["path"]["value"])


# ---------------------------------------------------------------- against the binary

def test_flags_exist_in_the_binary():
    known = help_flags()
    flags = flags_of(server_container(deployment())["args"])
    unknown = set(flags) - known
    assert not unknown, f"flags the binary does not have: {unknown}"


def test_ports_probes_and_grace():
    dep = deployment()
    c = server_container(dep)
    flags = flags_of(c["args"])
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named["http"] == int(flags["port"])
    assert flags["host"] == "0.0.0.0"  # reachable from outside the pod
    (svc,) = by_kind("Service")
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in named or p["targetPort"] in named.values(), p
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] in named or get["port"] in named.values(), probe
    # the model path the init container writes is the one the server reads
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert flags["model"] in " ".join(init["args"]), (flags["model"], init["args"])
    # graceful stop: preStop sleep + --shutdown-timeout must end before SIGKILL
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert grace > pre + float(flags["shutdown-timeout"]), (grace, pre, flags["shutdown-timeout"])
    # non-root, read-only root filesystem everywhere
    pod_sec = dep["spec"]["template"]["spec"]["securityContext"]
    assert pod_sec["runAsNonRoot"] is True and pod_sec["runAsUser"] != 0
    for cont in dep["spec"]["template"]["spec"]["containers"] + [init]:
        sec = cont["securityContext"]
        assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
        assert "memory" in cont["resources"]["limits"], cont["name"]


def test_manifest_flags_start_the_server(models, tmp_path):
    """The container's own flag list starts the real server (model, address,
    threads and KV size replaced by test values); its probe paths, scrape path
    and the metrics the autoscaler and the endpoint picker read are all there."""
    dep = deployment()
    c = server_container(dep)
    flags = flags_of(c["args"])
    test_values = {"model": None, "host": None, "port": None,  # set by Server()
                   "threads": "1", "kv-cache-memory": "16MiB"}
    args = []
    for name, val in flags.items():
        if name in test_values and test_values[name] is None:
            continue
        val = test_values.get(name, val)
        args.append(f"--{name}" if val is None else f"--{name}={val}")
    with Server(models["spm"], tmp_path, *args, name="k8s") as srv:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            status, _, body = request(srv, "GET", c[probe]["httpGet"]["path"], timeout=10)
            assert status == 200, (probe, body)
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == int(flags["port"])
        status, _, data = request(srv, "GET", annotations["prometheus.io/path"], timeout=10)
        assert status == 200
        text = data.decode()
        names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
        for m in EPP_METRICS:
            assert m in names, m
        # the adapter rule's series, and the name it exposes, are the HPA's metric
        (cm,) = [d for d in by_kind("ConfigMap") if "config.yaml" in d.get("data", {})]
        rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
        (hpa,) = by_kind("HorizontalPodAutoscaler")
        hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                       if m["type"] == "Pods"}
        exposed = set()
        for r in rules:
            series = re.match(r"'?([a-zA-Z_:][a-zA-Z0-9_:]*)", r["seriesQuery"]).group(1)
            assert series in names, series
            exposed.add(re.sub(r["name"]["matches"], r["name"]["as"].replace("${1}", r"\1"),
                               series))
        assert hpa_metrics and hpa_metrics <= exposed, (hpa_metrics, exposed)
        # the model name clients send is the one the server serves
        status, _, body = request(srv, "GET", "/v1/models", timeout=10)
        assert flags["served-model-name"] in body.decode()
        # the HTTPRoute's prefix reaches a real route
        status, _, _ = request(srv, "POST", "/v1/completions",
                               {"model": flags["served-model-name"], "prompt": "a",
                                "max_tokens": 1}, timeout=30)
        assert status == 200
