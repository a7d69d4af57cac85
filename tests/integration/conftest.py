"""Fixtures for the HTTP integration tests: a generated model and a running server.

The binary comes from $SLIMSERVE_BIN (meson sets it). Models are generated with
`slimserve gen-model` into a temporary directory; each server listens on a free
127.0.0.1 port, is ready once /health answers, and is always killed at the end.
Python standard library only (plus pytest).
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

START_TIMEOUT = 30.0  # seconds for a server to answer /health
HTTP_TIMEOUT = 60.0  # seconds per request


def slimserve_bin():
    path = os.environ.get("SLIMSERVE_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.skip("SLIMSERVE_BIN is not set to the slimserve executable")
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gen_model(out, tokenizer, *extra):
    cmd = [slimserve_bin(), "gen-model", "--out", str(out), "--tokenizer", tokenizer, *extra]
    subprocess.run(cmd, check=True, timeout=120, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return str(out)


class Server:
    """One `slimserve serve` process. Use as a context manager, or call stop()."""

    def __init__(self, model, workdir, *args, env=None, name="srv", port=None):
        self.port = port or free_port()  # port: e.g. a restart on the same address
        self.host = "127.0.0.1"
        self.log_path = os.path.join(str(workdir), f"{name}-{self.port}.log")
        self.out_path = os.path.join(str(workdir), f"{name}-{self.port}.out")
        cmd = [slimserve_bin(), "serve", "--model", model, "--host", self.host,
               "--port", str(self.port), *args]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._log, env=full_env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        wait_health(self, "server")

    def log(self):
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self):
        if not self._out.closed:
            self._out.flush()
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()
        self._out.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        rc = self.stop()
        if exc_type is None:
            assert rc == 0, f"server exit code {rc}:\n{self.log()[-4000:]}"

    def stop_checked(self):
        """stop() and require a clean exit (0: graceful shutdown, no sanitizer report)."""
        rc = self.stop()
        assert rc == 0, f"server exit code {rc}:\n{self.log()[-4000:]}"


# ---------------------------------------------------------------- HTTP helpers

def wait_health(obj, what):
    """Polls GET /health on obj (host, port, proc, log()) until 200, for at most
    START_TIMEOUT seconds; raises with obj's log if its process exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if obj.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {obj.proc.returncode}:\n{obj.log()}")
        try:
            status, _, _ = request(obj, "GET", "/health", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT}s:\n{obj.log()}")


def request(srv, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
    """Returns (status, headers dict with lower-case names, body bytes)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def post_json(srv, path, obj, headers=None, timeout=HTTP_TIMEOUT):
    """POST a JSON body; returns (status, parsed JSON or None, headers)."""
    status, hdrs, data = request(srv, "POST", path, obj, headers, timeout)
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = None
    return status, parsed, hdrs


def complete(srv, timeout=HTTP_TIMEOUT, **params):
    status, body, _ = post_json(srv, "/v1/completions", params, timeout=timeout)
    assert status == 200, body
    return body


def stream_events(srv, params, timeout=HTTP_TIMEOUT, max_events=100000, path="/v1/completions"):
    """POST a streaming completion; returns (status, list of events). Each event is
    the parsed JSON payload, or the string "[DONE]"."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(dict(params, stream=True)),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return resp.status, [json.loads(resp.read())]
        assert resp.getheader("Content-Type", "").startswith("text/event-stream")
        return 200, read_sse(resp, max_events)
    finally:
        conn.close()


def read_sse(resp, max_events=100000):
    events = []
    deadline = time.monotonic() + HTTP_TIMEOUT
    while len(events) < max_events and time.monotonic() < deadline:
        line = resp.readline()
        if not line:
            break
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        assert line.startswith(b"data: "), line
        payload = line[6:]
        if payload == b"[DONE]":
            events.append("[DONE]")
            continue
        events.append(json.loads(payload))
    return events


def chat(srv, timeout=HTTP_TIMEOUT, **params):
    status, body, _ = post_json(srv, "/v1/chat/completions", params, timeout=timeout)
    assert status == 200, body
    return body


def get_metrics(srv):
    """GET /metrics parsed: {(name, labels): value} plus {name: type}. Checks the
    text format on the way: HELP then TYPE before a family's samples, histogram
    buckets cumulative in increasing le with +Inf last and equal to _count."""
    status, hdrs, data = request(srv, "GET", "/metrics", timeout=10)
    assert status == 200, data
    assert hdrs["content-type"].startswith("text/plain; version=0.0.4"), hdrs
    text = data.decode("utf-8")
    assert text.endswith("\n")
    samples, types, helps = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split()
            assert name in helps, f"TYPE before HELP for {name}"
            types[name] = typ
            continue
        assert line and not line.startswith("#"), line
        key, value = line.rsplit(" ", 1)
        name, _, labels = key.partition("{")
        labels = "{" + labels if labels else ""
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
                family = name[: -len(suffix)]
        assert family in types, f"{name} has no TYPE line before it"
        assert (name, labels) not in samples, f"duplicate series {name}{labels}"
        samples[(name, labels)] = float(value)
    for fam, typ in types.items():
        if typ != "histogram":
            continue
        # Buckets per series: the labels other than le (e.g. vllm:'s model_name).
        series = {}
        for (n, lab), v in samples.items():
            if n != fam + "_bucket":
                continue
            m = re.fullmatch(r'\{(.*?),?le="([^"]*)"\}', lab)
            assert m, (n, lab)
            series.setdefault(m.group(1), []).append((float(m.group(2)), v))
        assert series, fam
        for rest, buckets in series.items():
            les = [le for le, _ in buckets]
            assert les == sorted(les) and les[-1] == float("inf"), (fam, les)
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{fam} buckets are not cumulative: {counts}"
            other = "{" + rest + "}" if rest else ""
            assert samples[(fam + "_count", other)] == counts[-1], fam
            assert (fam + "_sum", other) in samples, fam
    return samples, types


def assert_error(status, body, want_status, param=None):
    """The OpenAI error shape, with status and (optionally) the offending field."""
    assert status == want_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["code"] is None or isinstance(err["code"], str), err
    if param is not None:
        assert err["param"] == param, err
    return err


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def models(model_dir):
    """Small models, one per tokenizer kind (fast: ~0.2M parameters)."""
    return {kind: gen_model(model_dir / f"tiny-{kind}.gguf", kind, "--ctx", "256", "--seed", "3")
            for kind in ("spm", "bpe")}


@pytest.fixture(scope="session")
def chat_model(model_dir):
    """A bpe model whose GGUF carries a ChatML tokenizer.chat_template, with two
    padding tokens renamed to the control tokens <|im_start|> and <|im_end|>
    (the generator writes no template: patched with the PyPI gguf package)."""
    pytest.importorskip("gguf")
    from gguf_patch import CHATML_TEMPLATE, patch
    src = gen_model(model_dir / "chat-src.gguf", "bpe", "--vocab", "1024", "--ctx", "256",
                    "--seed", "5")
    dst = str(model_dir / "chat-chatml.gguf")
    patch(src, dst, CHATML_TEMPLATE, {"<pad1020>": "<|im_start|>", "<pad1021>": "<|im_end|>"})
    return dst


@pytest.fixture(scope="session")
def slow_model(model_dir):
    """A model big enough that thousands of tokens take seconds (cancellation tests)."""
    return gen_model(model_dir / "slow.gguf", "bpe", "--dim", "512", "--layers", "4",
                     "--heads", "8", "--kv-heads", "4", "--ffn", "1536", "--ctx", "8192")


@pytest.fixture(scope="module", params=["spm", "bpe"])
def srv(request, models, tmp_path_factory):
    """A running server per tokenizer kind, shared by a module's tests."""
    workdir = tmp_path_factory.mktemp("srv")
    s = Server(models[request.param], workdir, "--served-model-name", "tiny",
               "--max-body", "65536", name=request.param)
    s.kind = request.param
    try:
        yield s
    finally:
        s.stop_checked()


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """One running server (spm model, default options) for tests that need any server."""
    s = Server(models["spm"], tmp_path_factory.mktemp("server"), name="server")
    try:
        yield s
    finally:
        s.stop_checked()
