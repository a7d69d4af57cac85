"""Three real slimserve replicas behind real nginx, configured with
deploy/nginx-replicas.conf (its six upstream `server` lines and its `listen`
substituted with the test's ports; nginx_util.py runs nginx).

What is checked, each replica's own /metrics telling where requests went:
  - spread: concurrent requests land on every replica (least_conn);
  - affinity: requests with one X-Session-ID all land on one replica;
  - failover, in one run: long streams on every replica, then
      * replica A is stopped (SIGTERM, a drain): its streams end with an SSE
        error event and [DONE]; the others keep streaming;
      * new requests meanwhile all succeed (nginx retries a refused connection
        on the next replica and leaves A out);
      * replica B is killed (SIGKILL, a crash): its streams end incomplete (no
        [DONE], the chunked response cut), never as a clean end; new requests
        all succeed on C;
      * A and B are restarted on their ports and rejoin: both serve requests
        again within a bounded number of requests.
The figures (requests, failures, spread, recovery time) are printed (pytest -s).
SLIMSERVE_NGINX_REPLICAS_CONF=path tests another config file.
"""
import http.client
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import HTTP_TIMEOUT, Server, get_metrics, request, wait_health
from nginx_util import Endpoint, Nginx, nginx_bin

REPO = Path(__file__).resolve().parents[2]
CONF = Path(os.environ.get("SLIMSERVE_NGINX_REPLICAS_CONF") or
            REPO / "deploy" / "nginx-replicas.conf")
N_REPLICAS = 3
REPLICA_ARGS = ("--served-model-name", "tiny", "--threads", "1", "--kv-cache-memory", "64MiB",
                "--shutdown-timeout", "0.3")
STREAM_TOKENS = 7000  # long enough to outlast the kills (the model's context is 8192)


def render_site(replica_ports, listen_port):
    """The replicas config with its three replica addresses (listed in both
    upstreams) and its listen port replaced."""
    text = CONF.read_text()
    default = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]
    for old, port in zip(default, replica_ports):
        text, n = re.subn(rf"(?m)^(\s*server\s+){re.escape(old)}\b", rf"\g<1>127.0.0.1:{port}",
                          text)
        assert n == 2, f"{CONF}: expected {old} in both upstreams"
    text, n = re.subn(r"(?m)^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{listen_port};", text)
    assert n == 1, f"{CONF}: expected one 'listen 80;' line"
    return text


class Farm:
    """N replicas (fixed ports, restartable) and nginx in front."""

    def __init__(self, model, workdir):
        nginx_bin()  # skip before starting anything
        self.model, self.workdir = model, workdir
        self.replicas = []
        try:
            for i in range(N_REPLICAS):
                self.replicas.append(self._start(i))
            ports = [r.port for r in self.replicas]
            self.nginx = Nginx(lambda listen: render_site(ports, listen), workdir)
        except BaseException:
            self.close()
            raise
        self.proxy = Endpoint(self.nginx.host, self.nginx.port)

    def _start(self, i, port=None):
        return Server(self.model, self.workdir, *REPLICA_ARGS, name=f"replica{i}", port=port)

    def restart(self, i):
        old = self.replicas[i]
        assert not old.alive()
        self.replicas[i] = self._start(i, port=old.port)

    def served(self):
        """Finished requests per replica (None for a replica that is down)."""
        out = []
        for r in self.replicas:
            if not r.alive():
                out.append(None)
                continue
            samples, _ = get_metrics(r)
            out.append(sum(v for (n, _), v in samples.items()
                           if n == "slimserve:request_success_total"))
        return out

    def running(self, i):
        samples, _ = get_metrics(self.replicas[i])
        return samples[("slimserve:num_requests_running", "")]

    def close(self):
        if getattr(self, "nginx", None):
            self.nginx.stop()
        for r in self.replicas:
            r.stop()


@pytest.fixture(scope="module")
def farm(slow_model, tmp_path_factory):
    f = Farm(slow_model, tmp_path_factory.mktemp("replicas"))
    try:
        yield f
    finally:
        f.close()


# ---------------------------------------------------------------- clients

def post(ep, body, headers=None, timeout=HTTP_TIMEOUT):
    status, hdrs, data = request(ep, "POST", "/v1/completions", body, headers, timeout)
    return status, hdrs, data


def burst(ep, n, concurrency, headers=None, max_tokens=4):
    """n short completions, `concurrency` at a time; returns the statuses."""
    statuses, lock = [], threading.Lock()
    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    def run(k):
        for j in range(per[k]):
            try:
                st, _, _ = post(ep, {"model": "tiny", "prompt": f"req {k}.{j}",
                                     "max_tokens": max_tokens, "ignore_eos": True}, headers)
            except OSError as e:
                st = repr(e)
            with lock:
                statuses.append(st)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HTTP_TIMEOUT * max(per))
    assert not any(t.is_alive() for t in threads), "a client hung"
    return statuses


def delta(after, before):
    return [None if a is None or b is None else a - b for a, b in zip(after, before)]


class Stream(threading.Thread):
    """One long streamed completion through the proxy, read until it ends or
    until stop() (then the client leaves). end: "done" ([DONE] after normal
    chunks), "error_event" (an SSE error event, then [DONE]), "incomplete" (the
    connection ended without [DONE]), "stopped" (we left)."""

    def __init__(self, ep, i):
        super().__init__(daemon=True)
        self.ep, self.i = ep, i
        self.events, self.end, self.error = 0, None, None
        self._leave = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection(self.ep.host, self.ep.port, timeout=HTTP_TIMEOUT)
        try:
            conn.request("POST", "/v1/completions",
                         body=json.dumps({"model": "tiny", "prompt": f"stream {self.i}",
                                          "max_tokens": STREAM_TOKENS, "ignore_eos": True,
                                          "stream": True}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            while not self._leave.is_set():
                line = resp.readline()
                if not line:
                    self.end = "incomplete"
                    return
                line = line.rstrip(b"\r\n")
                if not line or line.startswith(b":"):  # separator or SSE comment
                    continue
                payload = line[len(b"data: "):]
                if payload == b"[DONE]":
                    self.end = "error_event" if self.error else "done"
                    return
                obj = json.loads(payload)
                if "error" in obj:
                    self.error = obj["error"]
                else:
                    self.events += 1
            self.end = "stopped"
        except (http.client.IncompleteRead, ConnectionError):
            self.end = "incomplete"
        finally:
            conn.close()

    def stop(self):
        self._leave.set()


# ---------------------------------------------------------------- tests

def test_load_spreads(farm):
    before = farm.served()
    statuses = burst(farm.proxy, 30, 3)
    spread = delta(farm.served(), before)
    print(f"spread of 30 requests at concurrency 3 over 3 replicas: {spread}")
    assert statuses == [200] * 30, statuses
    assert sum(spread) == 30
    assert all(n >= 3 for n in spread), spread


def test_request_id_passes_through(farm):
    """nginx hands the client's X-Request-Id to the replica (which echoes it),
    or its own $request_id when the client sent none."""
    st, hdrs, _ = post(farm.proxy, {"model": "tiny", "prompt": "a", "max_tokens": 1},
                       headers={"X-Request-Id": "trace-123"})
    assert st == 200 and hdrs["x-request-id"] == "trace-123", hdrs
    st, hdrs, _ = post(farm.proxy, {"model": "tiny", "prompt": "a", "max_tokens": 1})
    assert st == 200 and re.fullmatch(r"[0-9a-f]{32}", hdrs["x-request-id"]), hdrs
    # the access log line is written once the answer has gone out: poll for it
    wait_until(lambda: any("[trace-123] POST /v1/completions 200" in r.log()
                           for r in farm.replicas), "the replica's access log names trace-123")


def test_session_affinity(farm):
    """One X-Session-ID -> one replica, for several sessions."""
    homes = set()
    for sid in ("alpha", "bravo", "charlie", "delta", "echo"):
        before = farm.served()
        statuses = burst(farm.proxy, 4, 1, headers={"X-Session-ID": sid})
        assert statuses == [200] * 4
        d = delta(farm.served(), before)
        assert sorted(d) == [0, 0, 4], (sid, d)
        homes.add(d.index(4))
    print(f"5 sessions landed on replicas {sorted(homes)}")


def wait_until(cond, what, timeout=HTTP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_failover_and_rejoin(farm):
    figures = {"requests": 0, "failures": 0}
    streams = [Stream(farm.proxy, i) for i in range(2 * N_REPLICAS)]
    try:
        for s in streams:
            s.start()
        # every replica is generating
        wait_until(lambda: all(farm.running(i) >= 1 for i in range(N_REPLICAS)),
                   "streams on every replica")
        wait_until(lambda: sum(farm.running(i) for i in range(N_REPLICAS)) == len(streams),
                   "every stream running")
        on = [farm.running(i) for i in range(N_REPLICAS)]
        print(f"streams per replica: {on}")

        # A: SIGTERM (drain): its streams end with an error event, then [DONE]
        a, b = farm.replicas[0], farm.replicas[1]
        a.signal(signal.SIGTERM)
        assert a.wait(30) == 0, a.log()[-3000:]
        wait_until(lambda: sum(s.end == "error_event" for s in streams) == on[0],
                   "the drained replica's streams to end")
        for s in streams:
            if s.end == "error_event":
                assert s.error["code"] == "server_shutting_down", s.error
                assert s.events >= 1
        assert sum(s.end is not None for s in streams) == on[0]

        # new requests during the outage: all succeed
        statuses = burst(farm.proxy, 20, 2)
        figures["requests"] += len(statuses)
        figures["failures"] += sum(st != 200 for st in statuses)
        assert statuses == [200] * 20, statuses

        # B: SIGKILL (crash): its streams end incomplete, never cleanly
        running_b = farm.running(1)
        b.proc.kill()
        b.wait(30)
        wait_until(lambda: sum(s.end == "incomplete" for s in streams) == running_b,
                   "the killed replica's streams to end")
        assert not any(s.end == "done" for s in streams)
        survivors = [s for s in streams if s.end is None]
        assert len(survivors) == on[2]
        counts = [s.events for s in survivors]
        wait_until(lambda: all(s.events > c for s, c in zip(survivors, counts)),
                   "the surviving streams to go on")

        statuses = burst(farm.proxy, 20, 2)
        figures["requests"] += len(statuses)
        figures["failures"] += sum(st != 200 for st in statuses)
        assert statuses == [200] * 20, statuses
        assert farm.served()[:2] == [None, None]
    finally:
        for s in streams:
            s.stop()
        for s in streams:
            s.join(HTTP_TIMEOUT)
    assert not any(s.is_alive() for s in streams), "a stream reader hung"

    # restart A and B on their ports; they rejoin once nginx tries them again
    farm.restart(0)
    farm.restart(1)
    for r in farm.replicas:
        wait_health(r, "replica")
    t0 = time.monotonic()
    base = farm.served()
    sent, rejoined = 0, None
    while sent < 400 and time.monotonic() - t0 < HTTP_TIMEOUT:
        statuses = burst(farm.proxy, 3, 3)
        sent += len(statuses)
        assert statuses == [200] * 3, statuses
        d = delta(farm.served(), base)
        if d[0] > 0 and d[1] > 0:
            rejoined = time.monotonic() - t0
            break
        time.sleep(0.1)
    figures["requests"] += sent
    assert rejoined is not None, f"restarted replicas not used after {sent} requests"
    before = farm.served()
    statuses = burst(farm.proxy, 30, 3)
    spread = delta(farm.served(), before)
    figures["requests"] += len(statuses)
    assert statuses == [200] * 30, statuses
    assert all(n >= 1 for n in spread), spread
    print(f"failover: {figures['requests']} requests, {figures['failures']} failed; "
          f"streams drained {on[0]} (error event), killed {running_b} (incomplete), "
          f"survived {on[2]}; rejoin {rejoined:.2f} s after the restarted replicas were "
          f"healthy ({sent} requests); spread after rejoin {spread}")
