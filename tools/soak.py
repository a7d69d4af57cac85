#!/usr/bin/env python3
"""soak.py - a soak test anyone can point at a running slimserve (or any
OpenAI-compatible server exposing vLLM-style /metrics).

    python3 tools/soak.py --url http://127.0.0.1:8080 --duration 1800 --clients 32 \
        --pid $(pidof slimserve) --rss-interval 60

What it does, for --duration seconds:
  * --clients threads, each sending one request after another, every one with
    random sampling parameters (temperature, top_p, top_k, min_p, seed,
    penalties, logit_bias, stop strings, n, logprobs, max_tokens) and a prompt
    of random length up to the context (a few go past it on purpose and must
    get a 400), on /v1/completions or /v1/chat/completions, streamed or not.
    Each request picks an ending:
        ok            read to the end and check it (SSE framing, [DONE], usage)
        cut_headers   close the socket in the middle of the request headers
        cut_body      send the headers and part of the body, then close
        cut_waiting   send the whole request, close before the answer starts
        cut_stream    read a few SSE events of a stream, then close
        slow_reader   read a stream slowly (a pause between reads)
  * every --storm-interval seconds a queue-cap storm: --storm-size requests at
    once with the longest generations (ignore_eos), expecting 503 + Retry-After
    beyond the server's --max-num-seqs + --max-queued-requests; 70% of them
    are cut while waiting, the rest read to the end;
  * a prober times GET /health every second; RSS is sampled every
    --rss-interval seconds from /proc/PID/status (--pid) or, without it, from
    /metrics process_resident_memory_bytes when the server exposes it.

Then, with every client stopped, the /metrics consistency check:
  1. quiet: num_requests_running and num_requests_waiting return to 0 within
     --settle seconds (a cancelled request must not stay in the engine);
  2. bounds over the whole soak: the generation_tokens_total delta is at least
     the completion tokens clients were told about (usage of completed
     requests), and the request_success_total delta (all reasons) is at least
     the requests that completed and at most the requests sent;
  3. exact, over a verification window where only this tool talks to the
     server: --verify requests (n = 1, never cut, streamed and not) run to the
     end; the generation_tokens_total delta must EQUAL the sum of their
     usage.completion_tokens, the request_success_total{stop|length} deltas
     must equal the finish reasons clients got, and running/waiting return to 0.
     (Cut streams are excluded from the exact check on purpose: the engine may
     generate tokens the client never received, so no client-side count can
     match the counter exactly.)

--spawn BIN starts the server itself (BIN serve --model MODEL on a free loopback
port, with any --server-arg), uses its pid, and at the end sends SIGTERM and
checks that it exits with status 0 and that its log holds no sanitizer report
(for ASan builds). Without --model it first writes a tiny model with
`BIN gen-model`. This is how `deploy/quickstart.sh test` runs it.

Report: outcomes by kind, errors by kind (with a sample message), stuck
requests (no byte for --stuck-after seconds, or a client still busy at the
end), /health latency (p50/p99/max, failures), RSS over time, and the checks.
Exit status 0 when every check passed: no stuck request, no unexpected error,
no /health failure, the /metrics checks, the server alive (with --pid), and
RSS growth under --max-rss-growth-mb when given; 1 otherwise; 2 on bad usage.
--json FILE also writes the whole report as JSON. Only the Python standard
library is used.
"""
import argparse
import json
import os
import random
import re
import socket
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge "
         "boxing matches near old stone bridges under pale winter skies and rivers "
         "hello world café naïve 日本 ünïcödé emoji 😀 numbers 12345 67.89").split()

OUTCOMES_OK = ("ok", "ok_400_too_long", "rejected_503", "cut_headers", "cut_body", "cut_waiting",
               "cut_stream", "slow_reader")


class Stuck(Exception):
    pass


class HttpError(Exception):
    def __init__(self, kind, msg):
        super().__init__(msg)
        self.kind = kind


# ---------------------------------------------------------------- HTTP client

class Conn:
    """A minimal HTTP/1.1 client over one socket, so every phase can be cut."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Stuck("no byte from the server for %.0f s" % self.timeout)
        if not chunk:
            raise HttpError("eof", "connection closed by the server")
        self.buf += chunk

    def readline(self):
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise HttpError("protocol", "line over 1 MiB")
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def readn(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self):
        status = self.readline()
        m = re.match(rb"HTTP/1\.[01] (\d{3})", status)
        if not m:
            raise HttpError("protocol", "bad status line %r" % status[:80])
        headers = {}
        while True:
            line = self.readline()
            if not line:
                break
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        return int(m.group(1)), headers

    def body_chunks(self, headers):
        """Yields the body in pieces (chunked, Content-Length or until EOF)."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.readline().split(b";")[0], 16)
                if size == 0:
                    while self.readline():
                        pass
                    return
                yield self.readn(size)
                self.readn(2)
        elif "content-length" in headers:
            yield self.readn(int(headers["content-length"]))
        else:
            while True:
                try:
                    self._fill()
                except HttpError:
                    break
                yield self.buf
                self.buf = b""
            if self.buf:
                yield self.buf


def request_bytes(host, port, method, path, body=b"", key=None, extra=""):
    h = "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n" % (method, path, host, port)
    if key:
        h += "Authorization: Bearer %s\r\n" % key
    if method == "POST":
        h += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    h += extra + "\r\n"
    return h.encode(), body


def simple(cfg, method, path, body=None, timeout=30):
    """One whole request: (status, headers, body bytes)."""
    c = Conn(cfg.host, cfg.port, timeout)
    try:
        head, data = request_bytes(cfg.host, cfg.port, method, path,
                                   json.dumps(body).encode() if body is not None else b"", cfg.api_key)
        c.send(head + data)
        st, hd = c.read_head()
        return st, hd, b"".join(c.body_chunks(hd))
    finally:
        c.close()


# ---------------------------------------------------------------- state

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = {}
        self.errors = {}       # kind -> [count, sample message]
        self.stuck = []
        self.sent = 0          # requests whose bytes were all sent (may have reached the engine)
        self.completed = 0     # requests answered 200 and read to the end
        self.usage_tokens = 0  # sum of usage.completion_tokens of those
        self.finish = {}       # finish_reason -> count (choices of completed requests)
        self.health = []       # (t, latency s or None)
        self.rss = []          # (t, bytes)

    def outcome(self, kind):
        with self.lock:
            self.outcomes[kind] = self.outcomes.get(kind, 0) + 1

    def error(self, kind, msg):
        with self.lock:
            e = self.errors.setdefault(kind, [0, msg])
            e[0] += 1


def metrics(cfg):
    """{name{labels}: value} from /metrics (the slimserve: or vllm: prefix folded)."""
    st, _, body = simple(cfg, "GET", "/metrics", timeout=30)
    if st != 200:
        raise HttpError("metrics", "/metrics answered %d" % st)
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        name, labels, val = m.group(1), m.group(2) or "", m.group(3)
        labels = re.sub(r'model_name="[^"]*",?', "", labels).replace(",}", "}")
        labels = "" if labels == "{}" else labels
        for pre in ("slimserve:", "vllm:"):
            if name.startswith(pre):
                name = name[len(pre):]
        try:
            out[name + labels] = float(val)
        except ValueError:
            pass
    return out


def finished_total(m):
    return sum(v for k, v in m.items() if k.startswith("request_success_total"))


# ---------------------------------------------------------------- requests

def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_request(cfg, rng, stream=None, cut_free=False, long_gen=False):
    """A random generation request: (path, body dict, expect_too_long).
    long_gen: the longest generation (storms, to fill the queue)."""
    chat = rng.random() < 0.5 and cfg.chat
    max_tokens = cfg.max_tokens if long_gen else rng.choice([1, 2, 4, 8, 16, 32, cfg.max_tokens])
    # prompt length up to the context; ~6% beyond it on purpose (unless cut_free)
    if not cut_free and rng.random() < 0.06:
        n_words = int(cfg.n_ctx / cfg.tok_per_word * rng.uniform(1.5, 2.5)) + 8
    else:
        room = max(1, cfg.n_ctx - max_tokens - 64)
        n_words = max(1, int(rng.choice([0.02, 0.1, 0.3, 0.6, 0.95]) * room / cfg.tok_per_word))
    text = words(rng, n_words)
    body = {"model": cfg.model, "max_tokens": max_tokens}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    r = rng.random
    if r() < 0.5:
        body["temperature"] = rng.choice([0, 0.3, 0.7, 1.0, 1.5])
    if r() < 0.3:
        body["top_p"] = rng.choice([0.5, 0.9, 1.0])
    if r() < 0.3:
        body["top_k"] = rng.choice([1, 5, 40])
    if r() < 0.2:
        body["min_p"] = rng.choice([0.05, 0.2])
    if r() < 0.5:
        body["seed"] = rng.randrange(1 << 31)
    if r() < 0.2:
        body["presence_penalty"] = rng.uniform(-1, 1)
        body["frequency_penalty"] = rng.uniform(-1, 1)
    if r() < 0.15:
        body["repetition_penalty"] = rng.choice([0.9, 1.1, 1.3])
    if r() < 0.15:
        body["logit_bias"] = {str(rng.randrange(1, 256)): rng.uniform(-100, 100) for _ in range(3)}
    if r() < 0.3:
        body["stop"] = [rng.choice(WORDS) for _ in range(rng.randrange(1, 4))]
    if long_gen or r() < 0.2:
        body["ignore_eos"] = True
    if r() < 0.15:
        body["logprobs"] = True if chat else rng.randrange(0, 4)
        if chat:
            body["top_logprobs"] = rng.randrange(0, 4)
    if not cut_free and r() < 0.15:
        body["n"] = rng.randrange(2, 4)
    body["stream"] = bool(stream if stream is not None else r() < 0.6)
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    # 1: certainly over the context (must be a 400); 0.5: near it (a 400 is
    # accepted when the server says context_length_exceeded); 0: well inside
    est = n_words * cfg.tok_per_word
    too_long = 1 if est > cfg.n_ctx * 1.4 else 0.5 if est + max_tokens > cfg.n_ctx * 0.8 else 0
    return ("/v1/chat/completions" if chat else "/v1/completions"), body, too_long


def n_words_of(body):
    text = body["messages"][0]["content"] if "messages" in body else body["prompt"]
    return len(text.split())


def read_sse(conn, headers, stats, limit_events=None, pause=0.0):
    """Reads an SSE stream. Returns (done, usage, finish reasons) or stops
    after limit_events events (returns None)."""
    pending = b""
    events = 0
    usage, finishes, done = None, [], False
    for piece in conn.body_chunks(headers):
        pending += piece
        while b"\n\n" in pending:
            ev, pending = pending.split(b"\n\n", 1)
            if ev.startswith(b":"):
                continue  # keep-alive comment
            if not ev.startswith(b"data: "):
                raise HttpError("sse_framing", "event without 'data: ': %r" % ev[:80])
            data = ev[6:]
            if data == b"[DONE]":
                done = True
                continue
            obj = json.loads(data)
            if "error" in obj:
                raise HttpError("sse_error", "error event: %s" % data[:200].decode("utf-8", "replace"))
            if obj.get("usage"):
                usage = obj["usage"]
            for ch in obj.get("choices", []):
                if ch.get("finish_reason"):
                    finishes.append(ch["finish_reason"])
            events += 1
            if limit_events is not None and events >= limit_events:
                return None
            if pause:
                time.sleep(pause)
    if pending.strip():
        raise HttpError("sse_framing", "stream ended inside an event")
    return done, usage, finishes


def run_one(cfg, stats, rng, ending, cut_free=False, stream=None, long_gen=False):
    """Sends one request with the given ending; records its outcome. Returns
    (usage completion tokens, finish reasons) for a completed request."""
    path, body, too_long = make_request(cfg, rng, stream=stream, cut_free=cut_free, long_gen=long_gen)
    if ending in ("cut_stream", "slow_reader"):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body).encode()
    head, _ = request_bytes(cfg.host, cfg.port, "POST", path, data, cfg.api_key)
    conn = Conn(cfg.host, cfg.port, cfg.stuck_after)
    try:
        if ending == "cut_headers":
            conn.send(head[:rng.randrange(1, len(head) - 2)])
            time.sleep(rng.uniform(0, 1.0))
            stats.outcome(ending)
            return None
        if ending == "cut_body":
            conn.send(head + data[:rng.randrange(0, max(1, len(data) - 1))])
            time.sleep(rng.uniform(0, 1.0))
            stats.outcome(ending)
            return None
        conn.send(head + data)
        with stats.lock:
            stats.sent += 1
        if ending == "cut_waiting":
            time.sleep(rng.uniform(0, 0.5))
            stats.outcome(ending)
            return None
        status, headers = conn.read_head()
        if status == 503:
            if "retry-after" not in headers:
                stats.error("503_without_retry_after", "503 without Retry-After on " + path)
            b"".join(conn.body_chunks(headers))
            stats.outcome("rejected_503")
            return None
        if status == 400 and too_long:
            text = b"".join(conn.body_chunks(headers))
            if too_long == 1 or b"context_length_exceeded" in text:
                stats.outcome("ok_400_too_long")
                return None
            stats.error("http_400", "%s: %s" % (path, text[:300].decode("utf-8", "replace")))
            return None
        if status != 200:
            text = b"".join(conn.body_chunks(headers))[:300].decode("utf-8", "replace")
            stats.error("http_%d" % status, "%s: %s" % (path, text))
            return None
        if too_long == 1:
            stats.error("too_long_accepted", "a prompt of ~%.0f tokens (context %d) got 200" % (
                n_words_of(body) * cfg.tok_per_word, cfg.n_ctx))
        if body["stream"]:
            limit = rng.randrange(1, 4) if ending == "cut_stream" else None
            res = read_sse(conn, headers, stats, limit, pause=0.2 if ending == "slow_reader" else 0.0)
            if res is None:
                stats.outcome(ending)
                return None
            done, usage, finishes = res
            if not done:
                stats.error("stream_without_done", "stream ended without data: [DONE]")
                return None
            if not usage:
                stats.error("stream_without_usage", "include_usage stream without a usage event")
                return None
        else:
            obj = json.loads(b"".join(conn.body_chunks(headers)))
            usage = obj.get("usage")
            finishes = [c.get("finish_reason") for c in obj.get("choices", [])]
            if not usage:
                stats.error("no_usage", "response without usage")
                return None
        n = body.get("n", 1)
        if len(finishes) != n or any(f not in ("stop", "length") for f in finishes):
            stats.error("finish_reason", "finish reasons %r for n=%d" % (finishes, n))
        if usage["completion_tokens"] > n * body["max_tokens"]:
            stats.error("usage_over_max", "completion_tokens %d > n*max_tokens" % usage["completion_tokens"])
        with stats.lock:
            stats.completed += 1
            stats.usage_tokens += usage["completion_tokens"]
            for f in finishes:
                stats.finish[f] = stats.finish.get(f, 0) + 1
        stats.outcome(ending)
        return usage["completion_tokens"], finishes
    except Stuck as e:
        with stats.lock:
            stats.stuck.append("%s %s (%s): %s" % (path, ending, "stream" if body["stream"] else "plain", e))
        return None
    except HttpError as e:
        stats.error(e.kind, "%s %s: %s" % (path, ending, e))
        return None
    except (ConnectionError, OSError) as e:
        stats.error("connection", "%s %s: %r" % (path, ending, e))
        return None
    except (ValueError, KeyError, TypeError) as e:
        stats.error("bad_json", "%s %s: %r" % (path, ending, e))
        return None
    finally:
        conn.close()


ENDINGS = [("ok", 50), ("cut_headers", 8), ("cut_body", 8), ("cut_waiting", 10), ("cut_stream", 16),
           ("slow_reader", 3)]


def client(cfg, stats, seed, stop_at):
    rng = random.Random(seed)
    kinds = [k for k, _ in ENDINGS]
    weights = [w for _, w in ENDINGS]
    while time.monotonic() < stop_at:
        run_one(cfg, stats, rng, rng.choices(kinds, weights)[0])


def storm(cfg, stats, seed, stop_at):
    """Every storm_interval s: storm_size requests at once; most cut while waiting."""
    rng = random.Random(seed)
    while True:
        t_next = time.monotonic() + cfg.storm_interval
        if t_next >= stop_at:
            return
        time.sleep(max(0.0, t_next - time.monotonic()))
        threads = []
        for i in range(cfg.storm_size):
            ending = "cut_waiting" if rng.random() < 0.7 else "ok"
            th = threading.Thread(target=run_one, args=(cfg, stats, random.Random(rng.random()), ending),
                                  kwargs={"stream": True, "long_gen": True}, daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join(cfg.stuck_after + 30)
        stats.outcome("storm")


def prober(cfg, stats, stop_evt):
    while not stop_evt.is_set():
        t0 = time.monotonic()
        try:
            st, _, _ = simple(cfg, "GET", "/health", timeout=cfg.health_timeout)
            lat = time.monotonic() - t0 if st == 200 else None
            if st != 200:
                stats.error("health_%d" % st, "/health answered %d" % st)
        except (OSError, HttpError, Stuck) as e:
            lat = None
            stats.error("health_failed", "/health: %r" % e)
        with stats.lock:
            stats.health.append((t0, lat))
        stop_evt.wait(max(0.0, 1.0 - (time.monotonic() - t0)))


def read_rss(cfg):
    if cfg.pid:
        try:
            with open("/proc/%d/status" % cfg.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    try:
        return metrics(cfg).get("process_resident_memory_bytes")
    except (OSError, HttpError, Stuck):
        return None


def sampler(cfg, stats, stop_evt):
    while True:
        rss = read_rss(cfg)
        if rss is not None:
            with stats.lock:
                stats.rss.append((time.monotonic(), rss))
        if stop_evt.wait(cfg.rss_interval):
            return


# ---------------------------------------------------------------- checks

def wait_quiet(cfg, timeout):
    """Waits until running and waiting are 0 on two reads 0.5 s apart."""
    t_end = time.monotonic() + timeout
    last = None
    zero = 0
    while time.monotonic() < t_end:
        try:
            m = metrics(cfg)
            last = (m.get("num_requests_running", -1), m.get("num_requests_waiting", -1))
            zero = zero + 1 if last == (0, 0) else 0
            if zero >= 2:
                return True, last
        except (OSError, HttpError, Stuck) as e:
            last = repr(e)
        time.sleep(0.5)
    return False, last


def verify(cfg, stats, checks):
    """The exact window: only cut-free n=1 requests, sequential pairs."""
    ok, last = wait_quiet(cfg, cfg.settle)
    if not ok:
        checks.append(("verify: quiet before the window", False, "running/waiting %r" % (last,)))
        return
    m0 = metrics(cfg)
    rng = random.Random(cfg.seed + 999)
    got_tokens, got_finish, answered = 0, {}, 0
    for i in range(cfg.verify):
        res = run_one(cfg, stats, rng, "ok", cut_free=True, stream=(i % 2 == 0))
        if res:
            answered += 1
            got_tokens += res[0]
            for f in res[1]:
                got_finish[f] = got_finish.get(f, 0) + 1
    ok, last = wait_quiet(cfg, cfg.settle)
    checks.append(("verify: running/waiting back to 0 after the window", ok, "last %r" % (last,)))
    m1 = metrics(cfg)
    d_gen = m1.get("generation_tokens_total", 0) - m0.get("generation_tokens_total", 0)
    checks.append(("verify: generation_tokens_total delta == sum of usage.completion_tokens "
                   "(%d requests)" % answered, d_gen == got_tokens,
                   "counter +%d, clients %d" % (d_gen, got_tokens)))
    for reason in ("stop", "length"):
        k = 'request_success_total{finished_reason="%s"}' % reason
        d = m1.get(k, 0) - m0.get(k, 0)
        checks.append(("verify: request_success_total{%s} delta == clients' finish_reason" % reason,
                       d == got_finish.get(reason, 0), "counter +%d, clients %d" % (d, got_finish.get(reason, 0))))
    checks.append(("verify: every window request answered", answered == cfg.verify,
                   "%d of %d" % (answered, cfg.verify)))


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def report(cfg, stats, checks, t0, wall):
    lines = []
    add = lines.append
    add("soak: %s, %d clients, %.0f s (+ checks %.0f s), seed %d" % (cfg.url, cfg.clients, cfg.duration,
                                                                   wall - cfg.duration, cfg.seed))
    add("")
    add("outcomes:")
    for k, v in sorted(stats.outcomes.items(), key=lambda kv: -kv[1]):
        add("  %-18s %8d" % (k, v))
    add("  %-18s %8d   (completed %d, usage completion tokens %d)" % ("requests sent", stats.sent,
                                                                     stats.completed, stats.usage_tokens))
    add("")
    add("errors by kind:" + (" none" if not stats.errors else ""))
    for k, (n, msg) in sorted(stats.errors.items(), key=lambda kv: -kv[1][0]):
        add("  %-24s %6d   e.g. %s" % (k, n, msg[:160]))
    add("")
    add("stuck requests: %d" % len(stats.stuck))
    for s in stats.stuck[:10]:
        add("  " + s)
    lats = [l for _, l in stats.health if l is not None]
    fails = sum(1 for _, l in stats.health if l is None)
    add("")
    add("/health: %d probes, %d failed; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        len(stats.health), fails, 1e3 * pct(lats, 50), 1e3 * pct(lats, 99), 1e3 * (max(lats) if lats else 0)))
    add("")
    add("RSS over time (%s):" % ("pid %d" % cfg.pid if cfg.pid else "/metrics process_resident_memory_bytes"))
    if not stats.rss:
        add("  no samples (pass --pid, or the server exposes no process_resident_memory_bytes)")
    else:
        add("  %8s %10s   %s" % ("t (s)", "RSS (MiB)", "/health p99 in the interval (ms)"))
        prev = t0
        for t, rss in stats.rss:
            window = [l for th, l in stats.health if prev <= th < t and l is not None]
            add("  %8.0f %10.1f   %s" % (t - t0, rss / 2**20, "%.1f" % (1e3 * pct(window, 99)) if window else "-"))
            prev = t
    add("")
    add("checks:")
    for name, ok, detail in checks:
        add("  [%s] %s: %s" % ("ok" if ok else "FAIL", name, detail))
    passed = all(ok for _, ok, _ in checks)
    add("")
    add("soak: %s (%d checks, %d failed)" % ("PASSED" if passed else "FAILED", len(checks),
                                             sum(1 for _, ok, _ in checks if not ok)))
    return "\n".join(lines), passed


def discover(cfg):
    """Model name, context length and tokens per word from the server."""
    st, _, body = simple(cfg, "GET", "/v1/models")
    if st != 200:
        raise SystemExit("soak: GET /v1/models answered %d: %s" % (st, body[:200]))
    models = json.loads(body)["data"]
    cfg.model = cfg.model or models[0]["id"]
    sample = words(random.Random(1), 200)
    st, _, body = simple(cfg, "POST", "/tokenize", {"model": cfg.model, "prompt": sample})
    if st == 200:
        tk = json.loads(body)
        cfg.n_ctx = cfg.n_ctx or int(tk.get("max_model_len") or 0)
        cfg.tok_per_word = max(0.5, tk["count"] / 200.0)
    else:
        cfg.tok_per_word = 2.0
    if not cfg.n_ctx:
        cfg.n_ctx = int(models[0].get("max_model_len") or 2048)
    st, _, body = simple(cfg, "POST", "/v1/chat/completions",
                         {"model": cfg.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    cfg.chat = st == 200


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cfg):
    """Starts BIN serve; returns (Popen, log path, temp dir)."""
    tmp = tempfile.mkdtemp(prefix="soak-")
    model = cfg.model_path
    if not model:
        model = os.path.join(tmp, "soak-model.gguf")
        subprocess.run([cfg.spawn, "gen-model", "--out", model, "--tokenizer", "bpe", "--ctx", "512",
                        "--vocab", "1024", "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    log = os.path.join(tmp, "server.log")
    cmd = [cfg.spawn, "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port)] + cfg.server_arg
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    cfg.url = "http://127.0.0.1:%d" % port
    cfg.host, cfg.port, cfg.pid = "127.0.0.1", port, proc.pid
    t_end = time.monotonic() + cfg.start_timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise SystemExit("soak: the server exited with %d at start:\n%s" % (proc.returncode, open(log).read()[-3000:]))
        try:
            if simple(cfg, "GET", "/health", timeout=2)[0] == 200:
                return proc, log, tmp
        except (OSError, HttpError, Stuck):
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("soak: the server did not answer /health in %.0f s" % cfg.start_timeout)


def stop_spawned(proc, log, checks):
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        checks.append(("server exits on SIGTERM within 120 s", False, "killed"))
    text = open(log, errors="replace").read()
    checks.append(("server exit status 0 after SIGTERM", rc == 0, "status %d" % rc))
    bad = re.search(r"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:).*", text)
    checks.append(("no sanitizer report in the server log", bad is None,
                   bad.group(0)[:200] if bad else "clean (%s)" % log))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--duration", type=float, default=120, help="seconds of load (default 120)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--pid", type=int, default=0, help="server pid for RSS and liveness")
    ap.add_argument("--api-key", default=os.environ.get("SLIMSERVE_API_KEY"))
    ap.add_argument("--model", default=None, help="model name (default: the first of /v1/models)")
    ap.add_argument("--n-ctx", type=int, default=0, help="context length (default: /tokenize's max_model_len)")
    ap.add_argument("--max-tokens", type=int, default=64, help="largest max_tokens sent (default 64)")
    ap.add_argument("--storm-interval", type=float, default=30, help="seconds between queue-cap storms")
    ap.add_argument("--storm-size", type=int, default=48,
                    help="requests per storm (default 48; to see 503s it must exceed the server's "
                         "--max-num-seqs + --max-queued-requests)")
    ap.add_argument("--rss-interval", type=float, default=5, help="seconds between RSS samples (default 5)")
    ap.add_argument("--stuck-after", type=float, default=60,
                    help="seconds without a byte after which a request counts as stuck (default 60)")
    ap.add_argument("--health-timeout", type=float, default=10)
    ap.add_argument("--settle", type=float, default=60, help="seconds allowed to return to idle (default 60)")
    ap.add_argument("--verify", type=int, default=8, help="requests in the exact /metrics window (default 8)")
    ap.add_argument("--max-rss-growth-mb", type=float, default=0,
                    help="fail if RSS grows more than this from the first to the last sample (0: report only)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the report as JSON to this file")
    ap.add_argument("--spawn", default=None, metavar="BIN", help="start BIN serve on a free port (see above)")
    ap.add_argument("--model-path", default=None, help="with --spawn: the GGUF to serve (default: a tiny generated one)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="with --spawn: one extra argument for serve (repeat; e.g. --server-arg=--max-queued-requests=8)")
    ap.add_argument("--start-timeout", type=float, default=120)
    cfg = ap.parse_args()
    u = urllib.parse.urlparse(cfg.url)
    if u.scheme != "http" or not u.hostname:
        ap.error("--url must be http://HOST:PORT")
    cfg.host, cfg.port = u.hostname, u.port or 80
    if cfg.clients < 1 or cfg.duration <= 0:
        ap.error("--clients >= 1 and --duration > 0")
    spawned = spawn(cfg) if cfg.spawn else None

    discover(cfg)
    stats = Stats()
    checks = []
    t0 = time.monotonic()
    stop_at = t0 + cfg.duration
    m_start = metrics(cfg)
    stop_evt = threading.Event()
    side = [threading.Thread(target=prober, args=(cfg, stats, stop_evt), daemon=True),
            threading.Thread(target=sampler, args=(cfg, stats, stop_evt), daemon=True)]
    for th in side:
        th.start()
    workers = [threading.Thread(target=client, args=(cfg, stats, cfg.seed * 1000 + i, stop_at), daemon=True)
               for i in range(cfg.clients)]
    if cfg.storm_size > 0 and cfg.storm_interval < cfg.duration:
        workers.append(threading.Thread(target=storm, args=(cfg, stats, cfg.seed * 1000 + 777, stop_at),
                                        daemon=True))
    for th in workers:
        th.start()
    grace = cfg.stuck_after + 30
    for th in workers:
        th.join(max(0.1, stop_at + grace - time.monotonic()))
    busy = sum(1 for th in workers if th.is_alive())
    if busy:
        stats.stuck.append("%d client threads still busy %.0f s after the end" % (busy, grace))

    # ---- checks
    alive = True
    if cfg.pid:
        alive = os.path.exists("/proc/%d" % cfg.pid)
        checks.append(("server process alive", alive, "pid %d" % cfg.pid))
    checks.append(("no stuck request", not stats.stuck, "%d stuck" % len(stats.stuck)))
    unexpected = {k: v[0] for k, v in stats.errors.items() if not k.startswith("health")}
    checks.append(("no unexpected error", not unexpected, json.dumps(unexpected) if unexpected else "none"))
    fails = sum(1 for _, l in stats.health if l is None)
    checks.append(("/health always answered 200", fails == 0 and len(stats.health) > 0,
                   "%d of %d probes failed" % (fails, len(stats.health))))
    if alive:
        try:
            ok, last = wait_quiet(cfg, cfg.settle)
            checks.append(("running/waiting back to 0 after the load", ok, "last %r" % (last,)))
            m_end = metrics(cfg)
            d_gen = m_end.get("generation_tokens_total", 0) - m_start.get("generation_tokens_total", 0)
            checks.append(("generation_tokens_total delta >= completion tokens clients were told",
                           d_gen >= stats.usage_tokens, "counter +%d, usage sum %d" % (d_gen, stats.usage_tokens)))
            d_fin = finished_total(m_end) - finished_total(m_start)
            checks.append(("request_success_total delta >= requests completed",
                           stats.completed <= d_fin, "counter +%d, completed %d, sent %d (n>1 counts per "
                           "choice)" % (d_fin, stats.completed, stats.sent)))
            if cfg.verify > 0:
                verify(cfg, stats, checks)
        except (OSError, HttpError, Stuck) as e:
            checks.append(("/metrics readable at the end", False, repr(e)))
    stop_evt.set()
    for th in side:
        th.join(5)
    rss = read_rss(cfg)
    if rss is not None:
        stats.rss.append((time.monotonic(), rss))
    if spawned and alive:
        stop_spawned(spawned[0], spawned[1], checks)
    if cfg.max_rss_growth_mb and len(stats.rss) >= 2:
        growth = (stats.rss[-1][1] - stats.rss[0][1]) / 2**20
        checks.append(("RSS growth under %.0f MiB" % cfg.max_rss_growth_mb, growth <= cfg.max_rss_growth_mb,
                       "%+.1f MiB" % growth))
    text, passed = report(cfg, stats, checks, t0, time.monotonic() - t0)
    print(text)
    if spawned and passed:
        shutil.rmtree(spawned[2], ignore_errors=True)  # kept on failure: the server log is there
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"outcomes": stats.outcomes, "errors": stats.errors, "stuck": stats.stuck,
                       "health": stats.health, "rss": [(t - t0, r) for t, r in stats.rss],
                       "checks": checks, "passed": passed}, f, indent=1)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
