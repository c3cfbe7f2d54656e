"""A private nginx for the benchmark: installed from Debian if missing, configured and run from
``bench/.work/nginx`` on 127.0.0.1, never touching the system's own nginx configuration."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import _apt  # bench/ is on sys.path when fetch.py runs as a script

_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def ensure_installed() -> Path:
    """Path of the nginx binary, running ``apt-get install -y nginx`` first if there is none."""
    return _apt.ensure("nginx", "nginx", _CANDIDATES)


def free_port(preferred: int) -> int:
    """``preferred`` if nothing listens there on 127.0.0.1, else a free port from the kernel."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


@dataclass(frozen=True)
class NginxConfig:
    root: Path
    """Directory served at ``/``."""
    prefix: Path
    """Where the config, pid file, logs and temp dirs live."""
    port: int
    limit_rate: str | None = None
    """nginx ``limit_rate`` (per connection, e.g. ``50m`` = 50 MB/s); None = unthrottled.
    Models a slow origin, where parallel ranged connections should pay off."""
    workers: int = 1
    """One worker: sendfile on loopback is cheap, and the clients need the other core."""

    def render(self) -> str:
        p = self.prefix
        user = "user root;\n" if os.geteuid() == 0 else ""
        rate = f"        limit_rate {self.limit_rate};\n" if self.limit_rate else ""
        temp = "".join(
            f"    {kind}_temp_path {p / 'tmp' / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            "daemon off;\n"
            f"{user}"
            f"worker_processes {self.workers};\n"
            f"pid {p / 'nginx.pid'};\n"
            f"error_log {p / 'error.log'} warn;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            "    default_type application/octet-stream;\n"
            "    log_format bench '$msec $connection \"$request\" $status $body_bytes_sent'\n"
            "                     ' \"$http_range\" $request_time';\n"
            f"    access_log {p / 'access.log'} bench;\n"
            f"{temp}"
            "    sendfile on;\n"
            "    tcp_nopush on;\n"
            "    keepalive_timeout 65;\n"
            "    server {\n"
            f"        listen 127.0.0.1:{self.port};\n"
            f"        root {self.root};\n"
            f"{rate}"
            "        location / { }\n"
            "    }\n"
            "}\n"
        )


class Nginx:
    """Runs ``nginx -p PREFIX -c nginx.conf`` in the foreground as our child; stops it on exit."""

    def __init__(self, binary: Path, config: NginxConfig) -> None:
        self.binary = binary
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.config.port}/{path.lstrip('/')}"

    @property
    def pid(self) -> int:
        """The master process's pid, once started."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def access_log(self) -> Path:
        return self.config.prefix / "access.log"

    def start(self, probe_path: str = "/", timeout: float = 10.0) -> Nginx:
        prefix = self.config.prefix
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(self.config.render())
        subprocess.run(
            [str(self.binary), "-t", "-q", "-p", str(prefix), "-c", str(conf)],
            check=True,
        )
        self._proc = subprocess.Popen([str(self.binary), "-p", str(prefix), "-c", str(conf)])
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited at start; see {prefix / 'error.log'}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.config.port, timeout=1.0)
                conn.request("HEAD", probe_path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return self
                raise RuntimeError(f"nginx answered {status} for {probe_path}")
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nginx did not start listening in time") from None
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # graceful: finish open responses, then exit
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
