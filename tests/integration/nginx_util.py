"""Real nginx for the integration tests: find the binary, run it in the
foreground with everything (pid, logs, temp paths) under a test directory,
around a site config the caller renders for the chosen listen port.

Used by test_nginx.py (one replica, deploy/nginx.conf) and test_replicas.py
(three replicas, deploy/nginx-replicas.conf). It works as root (workers then
run as root too, so they can reach pytest's 0700 tmp dirs) and as non-root
(nginx ignores `user` there; the listen port is above 1024). stop() always
ends the process group, also when the master was killed.
"""
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import free_port, wait_health


def nginx_bin():
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx",
                 "/usr/local/nginx/sbin/nginx"):
        if cand and os.access(cand, os.X_OK):
            return cand
    pytest.skip("nginx is not installed (Debian: apt-get install nginx-light); "
                "the nginx reverse-proxy tests need the real binary")


class Endpoint:
    """host/port pair usable with conftest's request helpers."""

    def __init__(self, host, port):
        self.host, self.port = host, port


class Nginx:
    """nginx in the foreground (master + 1 worker) with everything under workdir."""

    def __init__(self, render_site, workdir):
        """render_site(listen_port) -> the site's text (what a conf.d file holds)."""
        self.bin = nginx_bin()
        self.port = free_port()
        self.host = "127.0.0.1"
        self.dir = Path(workdir) / f"nginx-{self.port}"
        self.dir.mkdir(parents=True)
        (self.dir / "slimserve.conf").write_text(render_site(self.port))
        d = self.dir
        # As root, workers would drop to `nobody`, which cannot enter pytest's 0700
        # tmp dirs (body temp files); as non-root nginx ignores `user` anyway.
        user = ""
        if os.geteuid() == 0:
            import grp
            user = f"user root {grp.getgrgid(0).gr_name};"
        self.conf = d / "nginx.conf"
        self.conf.write_text(f"""{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    # An http{{}} that compresses everything, streams included: the drop-in
    # switches gzip off for its server (the stream tests check Content-Encoding).
    gzip on;
    gzip_proxied any;
    gzip_min_length 0;
    gzip_types text/event-stream application/json text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/slimserve.conf;
}}
""")
        base = [self.bin, "-p", f"{d}/", "-c", str(self.conf)]
        globals_ = "daemon off; master_process on;"
        test = subprocess.run(base + ["-t", "-g", globals_], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30)
        assert test.returncode == 0, "nginx -t failed:\n" + test.stdout.decode(errors="replace")
        self._out = open(d / "stderr.log", "wb")
        # Own session: stop() can reach the workers even if the master is killed.
        self.proc = subprocess.Popen(base + ["-g", globals_], stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        wait_health(self, "nginx")

    def log(self):
        parts = []
        for name in ("stderr.log", "error.log"):
            p = self.dir / name
            if p.exists():
                parts.append(f"--- {name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def stop(self):
        """Fast shutdown (SIGTERM to the master); SIGKILL to the group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._out.close()
        return self.proc.returncode
