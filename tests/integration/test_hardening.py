"""Connection policy (issue 14, part A): the listening socket is always
serviced, vanished clients free their slots at once, read deadlines for the
request head and body, the buffered-body budget, the per-address connection
limit, and a client that half-closes after its request still gets the answer.

Every test talks raw sockets to the real binary on 127.0.0.1; each is bounded
to well under a minute.
"""
import json
import socket
import threading
import time

from conftest import Server, assert_error, request

PARTIAL_POST = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{")


def connect(srv, timeout=5):
    return socket.create_connection((srv.host, srv.port), timeout=timeout)


def health_ok(srv, timeout):
    """GET /health with a deadline; True if it answered 200 in time."""
    try:
        st, _, _ = request(srv, "GET", "/health", timeout=timeout)
        return st == 200
    except OSError:
        return False


def read_all(sock, limit_s=20):
    """Everything until EOF (or a reset / the limit)."""
    data = b""
    deadline = time.monotonic() + limit_s
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def closed_by_server(sock, limit_s):
    """Seconds until the server closed sock (EOF or reset), or None if it is
    still open after limit_s. Reads (and drops) whatever comes first."""
    t0 = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - t0 < limit_s:
        try:
            if not sock.recv(4096):
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def final_response(raw):
    """(status, headers, body) of the final response in raw bytes, skipping
    interim 1xx answers (which an HTTP/1.1 client must accept)."""
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            raw = rest
            continue
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs, rest


def dechunk(body):
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        n = int(size_line.split(b";")[0], 16)
        if n == 0:
            break
        out += body[:n]
        body = body[n + 2:]
    return out


# ---------------------------------------------------------------- defect 1

def test_listener_survives_connection_limit(models, tmp_path):
    """The issue's recipe: with --max-connections 20 --timeout 3, 25 clients send
    the head of a POST (Content-Length: 100) and one body byte, hold 5 s and
    close. /health must answer again within a couple of seconds (it never did:
    the listener stayed out of MHD's epoll set)."""
    with Server(models["spm"], tmp_path, "--max-connections", "20", "--timeout", "3") as srv:
        socks = []
        for _ in range(25):
            s = connect(srv)
            s.sendall(PARTIAL_POST)
            socks.append(s)
        time.sleep(5)
        for s in socks:
            s.close()
        t0 = time.monotonic()
        ok = False
        while not ok and time.monotonic() - t0 < 3:
            ok = health_ok(srv, timeout=1)
        assert ok, "/health did not answer within 3 s of the clients leaving:\n" + srv.log()[-2000:]
        # and it keeps answering
        for _ in range(5):
            assert health_ok(srv, timeout=2)


# ---------------------------------------------------------------- defect 2

def test_vanished_clients_free_their_slots(models, tmp_path):
    """25 clients a second that send part of a head or of a body and vanish,
    for 4 s, against 20 connection slots and the default 60 s idle timeout:
    /health stays fast throughout (the slots were held until --timeout)."""
    with Server(models["spm"], tmp_path, "--max-connections", "20") as srv:
        stop = threading.Event()
        errors = []

        def vanisher():
            i = 0
            while not stop.is_set():
                try:
                    s = connect(srv, timeout=2)
                    if i % 2:
                        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
                    else:
                        s.sendall(PARTIAL_POST)
                    s.close()  # the bytes and the FIN arrive together
                except OSError as e:
                    errors.append(e)
                i += 1
                time.sleep(0.04)  # ~25 a second

        th = threading.Thread(target=vanisher)
        th.start()
        worst = 0.0
        try:
            t_end = time.monotonic() + 4
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                assert health_ok(srv, timeout=3), "/health timed out:\n" + srv.log()[-2000:]
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.2)
        finally:
            stop.set()
            th.join()
        assert worst < 1.5, worst
        assert health_ok(srv, timeout=2)


# ---------------------------------------------------------------- defect 3

def test_slowloris_head_is_cut(models, tmp_path):
    """One header line every 0.4 s: the head is never complete, and the
    connection is closed at --header-timeout after accept (an absolute
    deadline, however regularly the lines come)."""
    with Server(models["spm"], tmp_path, "--header-timeout", "2") as srv:
        s = connect(srv)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        closed_at = None
        i = 0
        while time.monotonic() - t0 < 8:
            try:
                s.sendall(b"X-Slow-%d: y\r\n" % i)
            except OSError:
                closed_at = time.monotonic() - t0
                break
            i += 1
            if closed_by_server(s, 0.4) is not None:
                closed_at = time.monotonic() - t0
                break
        s.close()
        assert closed_at is not None, "a slowloris head was never cut"
        assert 1.5 <= closed_at <= 4.0, closed_at
        assert health_ok(srv, timeout=2)


def test_body_deadline_is_a_gap(models, tmp_path):
    """--body-timeout bounds the gap between body reads: a body trickling a
    byte every 0.4 s survives well past it; one that stops is cut about
    --body-timeout after its last byte."""
    with Server(models["spm"], tmp_path, "--body-timeout", "1.5", "--header-timeout", "2") as srv:
        s = connect(srv)
        s.sendall(PARTIAL_POST)
        t_end = time.monotonic() + 4  # past both the body and the head timeouts
        while time.monotonic() < t_end:
            s.sendall(b" ")
            assert closed_by_server(s, 0.4) is None, "a body still arriving was cut"
        t_last = time.monotonic()
        gone = closed_by_server(s, 5)
        s.close()
        assert gone is not None, "a stalled body was never cut"
        assert 1.0 <= time.monotonic() - t_last <= 3.5, gone
        assert "request body stalled" in srv.log()


def test_deadlines_spare_keepalive_and_generation(slow_model, tmp_path):
    """Deadlines are for reading: a request whose generation outlasts both
    timeouts gets its answer, and a kept-alive connection may wait longer than
    --header-timeout before its next request."""
    with Server(slow_model, tmp_path, "--header-timeout", "1", "--body-timeout", "1",
                "--threads", "1") as srv:
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True,
                           "temperature": 0}).encode()
        req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        s = connect(srv, timeout=60)
        t0 = time.monotonic()
        s.sendall(req)
        f = s.makefile("rb")
        status = f.readline()
        assert b" 200 " in status, status
        length = 0
        while True:
            ln = f.readline()
            if ln in (b"\r\n", b""):
                break
            if ln.lower().startswith(b"content-length:"):
                length = int(ln.split(b":")[1])
        out = json.loads(f.read(length))
        took = time.monotonic() - t0
        assert out["usage"]["completion_tokens"] == 1500
        assert took > 1.5, f"generation too fast ({took:.2f}s) to prove anything"
        time.sleep(1.6)  # idle on the kept-alive connection, longer than --header-timeout
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in f.readline()
        s.close()


# ---------------------------------------------------------------- defect 4

def test_body_budget_answers_503(models, tmp_path):
    """--max-body-total: two held uploads announce 120 kB of 128 KiB; a third
    request (announced, or chunked and growing) gets 503 + Retry-After; once
    the held ones leave, the budget is back."""
    with Server(models["spm"], tmp_path, "--max-body", "64KiB", "--max-body-total", "128KiB") as srv:
        held = []
        for _ in range(2):
            s = connect(srv)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 60000\r\n\r\n{\"prompt\": \"")
            held.append(s)
        time.sleep(0.3)
        big = {"prompt": "x" * 59000, "max_tokens": 1}
        st, hdrs, data = request(srv, "POST", "/v1/completions", big, timeout=10)
        err = assert_error(st, json.loads(data), 503)
        assert err["code"] == "body_budget_exhausted", err
        assert hdrs.get("retry-after") == "1", hdrs
        # chunked: no announced length, the share grows as bytes arrive
        s = connect(srv)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"{\"prompt\": \"" + b"y" * 30000 + b"\", \"max_tokens\": 1}"
        s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
        status, hdrs, _ = final_response(read_all(s, 10))
        s.close()
        assert status == 503 and hdrs.get("retry-after") == "1", (status, hdrs)
        for s in held:
            s.close()
        deadline = time.monotonic() + 3
        while True:  # read and parsed now (the prompt is over the context: 400)
            st, _, data = request(srv, "POST", "/v1/completions", big, timeout=10)
            if st != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st == 400 and b"context_length_exceeded" in data, data


def test_body_budget_below_max_body_is_refused(models, tmp_path):
    import subprocess
    from conftest import slimserve_bin
    r = subprocess.run([slimserve_bin(), "serve", "--model", models["spm"], "--max-body", "1MiB",
                        "--max-body-total", "512KiB"], capture_output=True, timeout=30)
    assert r.returncode == 2
    assert b"--max-body-total" in r.stderr and b"below --max-body" in r.stderr, r.stderr


# ---------------------------------------------------------------- per-IP limit

def test_per_ip_connection_limit(models, tmp_path):
    with Server(models["spm"], tmp_path, "--max-connections-per-ip", "3") as srv:
        held = []
        for _ in range(3):
            s = connect(srv)
            s.sendall(b"GET /health HTTP/1.1\r\n")  # an unfinished head holds the slot
            held.append(s)
        time.sleep(0.3)
        s = connect(srv)
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            got = read_all(s, 5)
        except OSError:
            got = b""
        s.close()
        assert not got.startswith(b"HTTP/1.1 200"), "a 4th connection from one address was served"
        held.pop().close()
        deadline = time.monotonic() + 3
        ok = False
        while not ok and time.monotonic() < deadline:
            ok = health_ok(srv, timeout=1)
        assert ok
        for s in held:
            s.close()


# ---------------------------------------------------------------- defect 8: half-close

def test_half_close_still_gets_the_answer(models, tmp_path):
    """A client that sends a whole request and then shuts down its write side
    (socket.shutdown(SHUT_WR)) gets the answer: non-streamed, streamed, and a
    simple route. (A client that closes entirely is still noticed:
    test_lifecycle.test_disconnect_while_waiting_non_stream.)"""
    with Server(models["spm"], tmp_path) as srv:
        for stream in (False, True):
            body = json.dumps({"prompt": "hello", "max_tokens": 16, "ignore_eos": True,
                               "stream": stream}).encode()
            s = connect(srv, timeout=20)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            s.shutdown(socket.SHUT_WR)
            raw = read_all(s, 20)
            s.close()
            assert raw, f"no answer after a half-close (stream={stream}):\n" + srv.log()[-2000:]
            status, hdrs, rest = final_response(raw)
            assert status == 200, raw[:300]
            if stream:
                text = dechunk(rest) if hdrs.get("transfer-encoding") == "chunked" else rest
                assert b"data: [DONE]" in text, text[-300:]
            else:
                out = json.loads(rest[:int(hdrs["content-length"])])
                assert out["usage"]["completion_tokens"] == 16
        s = connect(srv)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        status, _, _ = final_response(read_all(s, 5))
        s.close()
        assert status == 200
