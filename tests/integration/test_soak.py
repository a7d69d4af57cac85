"""tools/soak.py: a short soak passes against the real server, and the tool
fails (exit 1, the check named) against a server whose /metrics disagree with
what its clients received, so its verdict can fail."""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import Server

SOAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "soak.py")


def run_soak(port, *args, timeout=300):
    cmd = [sys.executable, SOAK, "--url", f"http://127.0.0.1:{port}", *args]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          text=True)


def test_soak_passes_on_the_server(models, tmp_path):
    with Server(models["bpe"], tmp_path, "--max-num-seqs", "4", "--max-queued-requests", "4",
                name="soak") as s:
        out = tmp_path / "soak.json"
        r = run_soak(s.port, "--pid", str(s.proc.pid), "--duration", "8", "--clients", "4",
                     "--storm-interval", "3", "--storm-size", "16", "--rss-interval", "2",
                     "--stuck-after", "30", "--settle", "30", "--json", str(out))
        assert r.returncode == 0, r.stdout
        rep = json.loads(out.read_text())
        assert rep["passed"] and not rep["stuck"] and not rep["errors"], r.stdout
        # requests of every kind of ending went out, and RSS was sampled
        for kind in ("ok", "cut_headers", "cut_body", "cut_waiting", "cut_stream"):
            assert rep["outcomes"].get(kind, 0) > 0, (kind, rep["outcomes"])
        assert len(rep["rss"]) >= 3
        names = [c[0] for c in rep["checks"]]
        assert any("generation_tokens_total delta == sum of usage.completion_tokens" in n for n in names)
        assert s.alive()


class _LyingServer(BaseHTTPRequestHandler):
    """Answers like a server, but its generation counter never moves."""
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def _send(self, code, obj, ctype="application/json"):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "liar", "max_model_len": 256}]})
        elif self.path == "/metrics":
            self._send(200, b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
                            b"vllm:generation_tokens_total 0\n", "text/plain")
        else:
            self._send(404, {"error": {"message": "no"}})

    def do_POST(self):
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except (ValueError, OSError):
            return
        if self.path == "/tokenize":
            self._send(200, {"count": 200, "max_model_len": 256, "tokens": []})
            return
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        n = body.get("n", 1)
        if not body.get("stream"):
            self._send(200, {"choices": [{"index": i, "text": "ab", "finish_reason": "length"}
                                         for i in range(n)], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(n):
            self.wfile.write(b'data: {"choices":[{"index":%d,"text":"ab","finish_reason":"length"}]}\n\n' % i)
        self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


def test_soak_fails_when_metrics_disagree():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _LyingServer)
    srv.daemon_threads = True
    srv.handle_error = lambda *a: None  # cut requests end in broken sockets: expected
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        r = run_soak(srv.server_address[1], "--duration", "2", "--clients", "2", "--storm-size", "0",
                     "--verify", "4", "--settle", "5", "--stuck-after", "10", timeout=120)
    finally:
        srv.shutdown()
    assert r.returncode == 1, r.stdout
    assert "[FAIL] verify: generation_tokens_total delta == sum of usage.completion_tokens" in r.stdout, r.stdout
    assert "soak: FAILED" in r.stdout
