"""/metrics as a router reads it: the Gateway API Inference Extension's model
server protocol (kubernetes-sigs/gateway-api-inference-extension, proposal 003).

Its endpoint picker reads vLLM's names with no configuration:
vllm:num_requests_waiting and vllm:num_requests_running (gauges),
vllm:kv_cache_usage_perc (gauge, 0..1) and, optionally, vllm:cache_config_info
with block_size and num_gpu_blocks labels. The text is parsed with a real
Prometheus parser (prometheus_client.parser from PyPI), scraped repeatedly
while streaming clients keep the server busy (more clients than --max-num-seqs,
so requests wait), and each series is checked for type and meaning:
  - the queue and batch gauges see the load (waiting >= 1 and running == the
    seat cap at some scrape), then go back to 0;
  - KV usage stays in [0, 1] and is above 0 while requests run;
  - cache_config_info's num_gpu_blocks equals the page count computed
    independently from --kv-cache-memory and the model's shape read with the
    PyPI gguf package (16 token slots x layers x K and V x kv heads x head dim
    x 2 bytes of f16 per page);
  - every vllm: series has its slimserve: twin with the same value in the same
    scrape, and carries vLLM's model_name label.
"""
import threading
import time

import pytest

from conftest import HTTP_TIMEOUT, Server, gen_model, request, stream_events

parser = pytest.importorskip("prometheus_client.parser")

MODEL_NAME = "proto"
KV_BYTES = 4 << 20
SEATS = 2
CLIENTS = 6
MAX_TOKENS = 96
REQUIRED = {  # what the endpoint picker reads, and vLLM's type for it
    "vllm:num_requests_waiting": "gauge",
    "vllm:num_requests_running": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:cache_config_info": "gauge",
}


def scrape(srv):
    """{family name: (type, [(sample name, labels, value)])} via prometheus_client."""
    status, hdrs, data = request(srv, "GET", "/metrics", timeout=10)
    assert status == 200, data
    assert hdrs["content-type"].startswith("text/plain; version=0.0.4"), hdrs
    out = {}
    for fam in parser.text_string_to_metric_families(data.decode("utf-8")):
        assert fam.name not in out, f"family {fam.name} declared twice"
        out[fam.name] = (fam.type, [(s.name, dict(s.labels), s.value) for s in fam.samples])
    return out


def one(fams, name):
    """The single sample of a family without labels other than model_name."""
    typ, samples = fams[name]
    plain = [s for s in samples if set(s[1]) <= {"model_name"}]
    assert len(plain) == 1, (name, samples)
    return plain[0]


def expected_pages(path, kv_bytes):
    """KV pages of the pool, from the GGUF's shape (independent of the server)."""
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(path)

    def u32(key):
        f = r.fields[key]
        return int(f.parts[f.data[0]][0])
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    layers = u32(f"{arch}.block_count")
    heads, kv_heads = u32(f"{arch}.attention.head_count"), u32(f"{arch}.attention.head_count_kv")
    head_dim = u32(f"{arch}.embedding_length") // heads
    per_page = 16 * layers * 2 * kv_heads * head_dim * 2  # f16 K and V
    return kv_bytes // per_page


@pytest.fixture(scope="module")
def proto_model(model_dir):
    return gen_model(model_dir / "proto.gguf", "bpe", "--dim", "256", "--layers", "4",
                     "--heads", "8", "--kv-heads", "4", "--ffn", "768", "--ctx", "1024",
                     "--seed", "13")


def test_model_server_protocol_under_load(proto_model, tmp_path):
    with Server(proto_model, tmp_path, "--served-model-name", MODEL_NAME,
                "--kv-cache-memory", str(KV_BYTES), "--max-num-seqs", str(SEATS),
                "--threads", "1", name="proto") as srv:
        idle = scrape(srv)
        for name, typ in REQUIRED.items():
            assert name in idle, f"{name} missing"
            assert idle[name][0] == typ, (name, idle[name][0])
        # cache_config_info: value 1, the pool's geometry in its labels
        for prefix in ("vllm:", "slimserve:"):
            _, samples = idle[prefix + "cache_config_info"]
            assert len(samples) == 1, samples
            _, labels, v = samples[0]
            assert v == 1
            assert labels["block_size"] == "16"
            assert int(labels["num_gpu_blocks"]) == expected_pages(proto_model, KV_BYTES), labels
        assert one(idle, "vllm:num_requests_running")[2] == 0
        assert one(idle, "vllm:num_requests_waiting")[2] == 0

        errors, done = [], threading.Event()

        def client(i):
            try:
                st, events = stream_events(srv, dict(model=MODEL_NAME, prompt=f"load {i} " * 8,
                                                     max_tokens=MAX_TOKENS, ignore_eos=True))
                assert st == 200 and events[-1] == "[DONE]", events[-2:]
            except BaseException as e:  # reported in the main thread
                errors.append(f"client {i}: {e!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        seen = {"waiting": 0.0, "running": 0.0, "kv": 0.0}
        n_scrapes = 0
        deadline = time.monotonic() + HTTP_TIMEOUT
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline \
                and n_scrapes < 5000:
            fams = scrape(srv)
            n_scrapes += 1
            for name in REQUIRED:
                assert fams[name][0] == REQUIRED[name], name
            running = one(fams, "vllm:num_requests_running")
            waiting = one(fams, "vllm:num_requests_waiting")
            kv = one(fams, "vllm:kv_cache_usage_perc")
            for s in (running, waiting, kv):
                assert s[1] == {"model_name": MODEL_NAME}, s
            assert 0 <= running[2] <= SEATS and 0 <= waiting[2] <= CLIENTS
            assert 0.0 <= kv[2] <= 1.0, kv
            # the twins agree within one scrape (one snapshot)
            for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                         "generation_tokens", "prompt_tokens", "num_preemptions"):
                assert one(fams, "slimserve:" + name)[2] == one(fams, "vllm:" + name)[2], name
            seen["waiting"] = max(seen["waiting"], waiting[2])
            seen["running"] = max(seen["running"], running[2])
            if running[2] > 0:
                seen["kv"] = max(seen["kv"], kv[2])
            time.sleep(0.02)
        for t in threads:
            t.join(HTTP_TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert not errors, errors
        print(f"{n_scrapes} scrapes under load; max waiting {seen['waiting']:.0f}, "
              f"max running {seen['running']:.0f}, max KV usage {seen['kv']:.4f}")
        assert seen["waiting"] >= 1, seen
        assert seen["running"] == SEATS, seen
        assert seen["kv"] > 0, seen

        after = scrape(srv)
        assert one(after, "vllm:num_requests_running")[2] == 0
        assert one(after, "vllm:num_requests_waiting")[2] == 0
        # counters: vLLM's families (the parser strips _total), CLIENTS x MAX_TOKENS tokens
        assert after["vllm:generation_tokens"][0] == "counter"
        assert one(after, "vllm:generation_tokens")[2] == CLIENTS * MAX_TOKENS
        _, succ = after["vllm:request_success"]
        length = [v for n, lab, v in succ if lab.get("finished_reason") == "length"]
        assert length == [CLIENTS], succ
        assert after["vllm:time_to_first_token_seconds"][0] == "histogram"
        count = [v for n, lab, v in after["vllm:time_to_first_token_seconds"][1]
                 if n.endswith("_count")]
        assert count == [CLIENTS]
