"""The operator's files against the real /metrics: deploy/grafana-dashboard.json
and deploy/prometheus.yml.

Every query parses as PromQL (PyPI promql-parser, Grafana's $variables
substituted first). Every series a panel queries must exist in /metrics (a
family with a TYPE line, or a histogram's _bucket/_sum/_count), and every label a query
selects or groups by (other than the job/instance labels Prometheus adds) must
occur on that family's samples. The server runs a SUBLLM model with LTE
routers so the per-level and LTE series have samples, after a few requests so the counters moved.
The scrape config's paths answer 200 and its pod relabelling reads the
annotations deploy/kubernetes/deployment.yaml sets.
"""
import json
import re
from pathlib import Path

import pytest

from conftest import Server, complete, gen_model, request

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "le"}  # added by Prometheus / histograms
METRIC = re.compile(r"\b((?:slimserve|vllm):[A-Za-z0-9_:]+)(\{[^}]*\})?")


@pytest.fixture(scope="module")
def exposition(model_dir, tmp_path_factory):
    """(families {name: type}, labels {sample name: set of label names}) of a
    SUBLLM model's server after a few requests."""
    model = gen_model(model_dir / "dash-subllm.gguf", "spm", "--arch", "subllm", "--structure",
                      "TT(TT(T)TT)TT", "--keep", "0.64", "--ctx", "256", "--seed", "4",
                      "--lte-expert-size", "32", "--lte-sparsity", "0.5")
    with Server(model, tmp_path_factory.mktemp("dash"), name="dash") as srv:
        for i in range(3):
            complete(srv, prompt=f"dashboard {i} " * 4, max_tokens=6, ignore_eos=True)
        status, _, data = request(srv, "GET", "/metrics", timeout=10)
        assert status == 200
        for path in scrape_paths():
            st, _, _ = request(srv, "GET", path, timeout=10)
            assert st == 200, path
    families, labels = {}, {}
    for line in data.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split()
            families[name] = typ
        elif line and not line.startswith("#"):
            m = re.match(r"([^{ ]+)(?:\{(.*)\})? ", line)
            names = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m.group(2) or ""))
            labels.setdefault(m.group(1), set()).update(names)
    return families, labels


def family_of(name, families):
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base and families.get(base) == "histogram":
            return base
    return None


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        assert p.get("targets"), p["title"]
        for t in p["targets"]:
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        out.append((f"variable {v['name']}", v["query"]))
    return out


def scrape_paths():
    yaml = pytest.importorskip("yaml")
    conf = yaml.safe_load(PROMETHEUS.read_text())
    return {job.get("metrics_path", "/metrics") for job in conf["scrape_configs"]}


def test_dashboard_is_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] < 24 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    # the list: throughput, TTFT/ITL percentiles, queue, KV per level, preemptions
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needle in ("generation_tokens_total", "time_to_first_token_seconds_bucket",
                   "inter_token_latency_seconds_bucket", "num_requests_waiting",
                   "kv_cache_usage_perc", "num_preemptions_total"):
        assert needle in exprs, needle


def grafana_to_promql(expr):
    """Grafana's template variables replaced by what they expand to."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?(job|instance)\}?", ".*", expr)


def test_every_query_parses():
    promql = pytest.importorskip("promql_parser")
    for title, expr in dashboard_exprs():
        if expr.startswith("label_values("):  # a Grafana variable query, not PromQL
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr).group(1)
            expr = inner
        try:
            promql.parse(grafana_to_promql(expr))
        except ValueError as e:
            pytest.fail(f"{title}: {expr}: {e}")
    with pytest.raises(ValueError):  # the parser does reject mistakes
        promql.parse("sum(rate(slimserve:prompt_tokens_total[1m])")


def test_every_queried_series_exists(exposition):
    families, labels = exposition
    checked = 0
    for title, expr in dashboard_exprs():
        found = METRIC.findall(expr)
        assert found, f"{title}: no slimserve series in {expr}"
        grouped = set()
        for g in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            grouped |= {x.strip() for x in g.split(",") if x.strip()}
        for name, selector in found:
            fam = family_of(name, families)
            assert fam, f"{title}: {name} is not in /metrics"
            have = set().union(*[v for k, v in labels.items() if family_of(k, families) == fam])
            used = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", selector or ""))
            missing = (used | grouped) - have - SCRAPE_LABELS
            assert not missing, f"{title}: {name} has no label(s) {missing} (has {have})"
            checked += 1
    assert checked >= 20, checked


def test_scrape_config_matches_the_deployment():
    yaml = pytest.importorskip("yaml")
    conf = yaml.safe_load(PROMETHEUS.read_text())
    (dep,) = [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes" /
                                              "deployment.yaml").read_text())
              if d and d["kind"] == "Deployment"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    (k8s,) = [j for j in conf["scrape_configs"] if "kubernetes_sd_configs" in j]
    read = set()
    for rule in k8s["relabel_configs"]:
        for src in rule.get("source_labels", []):
            m = re.fullmatch(r"__meta_kubernetes_pod_annotation_(\w+)", src)
            if m:
                read.add(m.group(1))
    # Prometheus turns an annotation name into a label by replacing . / - with _
    have = {re.sub(r"[^A-Za-z0-9_]", "_", a) for a in annotations}
    assert read and read <= have, (read, have)
    targets = [t for j in conf["scrape_configs"] for s in j.get("static_configs", [])
               for t in s["targets"]]
    assert targets and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets), targets
