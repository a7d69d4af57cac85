"""GET /metrics on a fresh server: the Prometheus text parses, and its counters
and histogram counts match exactly the requests this test made."""
import pytest

from conftest import Server, complete, get_metrics, request, stream_events

PREFIX = "slimserve:"
HISTOGRAMS = ["time_to_first_token_seconds", "inter_token_latency_seconds",
              "e2e_request_latency_seconds", "request_queue_time_seconds",
              "iteration_tokens_total"]


@pytest.fixture(scope="module")
def fresh(models, tmp_path_factory):
    s = Server(models["bpe"], tmp_path_factory.mktemp("metrics"), "--no-prefix-cache",
               name="metrics")
    try:
        yield s
    finally:
        s.stop_checked()


def value(samples, name, labels=""):
    return samples[(PREFIX + name, labels)]


def test_metrics_families(fresh):
    samples, types = get_metrics(fresh)
    want = {"num_requests_running": "gauge", "num_requests_waiting": "gauge",
            "kv_cache_usage_perc": "gauge", "num_preemptions_total": "counter",
            "prompt_tokens_total": "counter", "generation_tokens_total": "counter",
            "prefix_cache_queries_total": "counter", "prefix_cache_hits_total": "counter",
            "request_success_total": "counter"}
    want.update({h: "histogram" for h in HISTOGRAMS})
    for name, typ in want.items():
        assert types.get(PREFIX + name) == typ, name
    assert 0 <= value(samples, "kv_cache_usage_perc") <= 1
    assert value(samples, "kv_cache_usage_perc", '{level="0"}') == \
        value(samples, "kv_cache_usage_perc")
    for reason in ("stop", "length", "abort", "error"):
        assert (PREFIX + "request_success_total", '{finished_reason="%s"}' % reason) in samples
    status, _, _ = request(fresh, "HEAD", "/metrics")
    assert status == 200


def test_metrics_count_the_requests(fresh):
    before, _ = get_metrics(fresh)
    assert value(before, "e2e_request_latency_seconds_count") == 0  # fresh server
    usages = []
    prompt = "Counting tokens for the metrics test, one two three four five six seven"
    for i in range(3):
        usages.append(complete(fresh, prompt=prompt, max_tokens=5 + i, temperature=0,
                               ignore_eos=True)["usage"])
    for i in range(2):
        st, events = stream_events(fresh, dict(prompt=[5, 6, 7, 8 + i], max_tokens=4,
                                               stream_options={"include_usage": True}))
        assert st == 200 and events[-1] == "[DONE]"
        usages.append(events[-2]["usage"])
    s, _ = get_metrics(fresh)
    n = len(usages)
    assert value(s, "prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert value(s, "generation_tokens_total") == sum(u["completion_tokens"] for u in usages)
    done = sum(value(s, "request_success_total", '{finished_reason="%s"}' % r)
               for r in ("stop", "length"))
    assert done == n
    assert value(s, "request_success_total", '{finished_reason="error"}') == 0
    assert value(s, "e2e_request_latency_seconds_count") == n
    assert value(s, "time_to_first_token_seconds_count") == n
    assert value(s, "request_queue_time_seconds_count") == n
    # one inter-token gap per token after the first
    assert value(s, "inter_token_latency_seconds_count") == \
        sum(u["completion_tokens"] - 1 for u in usages)
    assert value(s, "iteration_tokens_total_count") >= max(u["completion_tokens"] for u in usages)
    assert value(s, "iteration_tokens_total_sum") >= sum(u["prompt_tokens"] for u in usages)
    assert value(s, "num_requests_running") == 0 and value(s, "num_requests_waiting") == 0
    # --no-prefix-cache: the same prompt three times never hits
    assert value(s, "prefix_cache_hits_total") == 0
    assert value(s, "num_preemptions_total") == 0


def test_prefix_cache_hits_by_default(models, tmp_path):
    with Server(models["bpe"], tmp_path, name="pc") as srv:
        ids = list(range(10, 60))  # 50 tokens: three full pages
        for _ in range(2):
            complete(srv, prompt=ids, max_tokens=2, temperature=0)
        s, _ = get_metrics(srv)
        assert value(s, "prefix_cache_hits_total") >= 32
        assert value(s, "prefix_cache_queries_total") >= 100
