"""The image server of the benchmark, on 127.0.0.1–127.0.0.16.

nginx (Debian's, started here with a config of our own) when it is installed,
over HTTP and, on a second port, HTTPS (TLS 1.3, keep-alive and a session
cache, a self-signed certificate made once: every client skips the checks);
otherwise, and whenever a per-request latency is asked for, a small asyncio
server over HTTP only that answers keep-alive GETs with ``sendfile`` after a
fixed delay.
Both append one line per request (``<unix time> <status> <path>``) to an
access log, which the probes read: first request time, downloads made.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.corpus import CACHE, HOSTS, base_url

NGINX_CONFIG = """\
daemon off;
worker_processes 1;
{user}
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    log_format bench '$msec $status $request_uri';
    access_log {work}/access.log bench;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120;
    ssl_protocols TLSv1.3;
    ssl_certificate {certificate};
    ssl_certificate_key {key};
    ssl_session_cache shared:bench:16m;
    ssl_session_timeout 1h;
    types {{ image/jpeg jpg; image/png png; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
{listens}
        location /photos/ {{ alias {files}/; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
    )


def certificate(folder: Path = CACHE / "tls") -> tuple[Path, Path]:
    """A self-signed certificate (and key) for 127.0.0.1–16, made once."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not cert.exists():
        folder.mkdir(parents=True, exist_ok=True)
        names = ",".join(f"IP:127.0.0.{i + 1}" for i in range(HOSTS))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
             "-subj", "/CN=127.0.0.1", "-addext", f"subjectAltName={names}",
             "-keyout", str(key), "-out", f"{cert}.tmp"],
            check=True, capture_output=True,
        )
        Path(f"{cert}.tmp").rename(cert)  # last: a certificate is never there without its key
    return cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running image server; ``kind`` is "nginx" or "python" (no ``tls_port``)."""

    kind: str
    port: int
    work: Path
    latency_ms: int = 0
    tls_port: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def base_url(self, protocol: str) -> str:
        """The URL prefix for "http" or "https" (see ``corpus.base_url``)."""
        port = {"http": self.port, "https": self.tls_port}[protocol]
        if port is None:
            raise ValueError(f"the {self.kind} server does not serve {protocol}")
        return base_url(protocol, port)

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def requests(self) -> list[tuple[float, str, str]]:
        """(time, status, path) of every request served so far."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text().splitlines()
        return [(float(t), status, path) for t, status, path in (line.split(" ", 2) for line in lines)]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    files: Path, work: Path, *, latency_ms: int = 0, prefer: str = "nginx", port: int | None = None
) -> Server:
    """Start nginx (no latency; HTTPS too, on a free port) or the Python
    server, on a free port unless ``port`` is given, and wait until it answers."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    (work / "access.log").write_text("")
    port = port or free_port()
    binary = nginx_binary()
    if prefer == "nginx" and binary and latency_ms == 0:
        tls_port = free_port()
        cert, key = certificate()
        listens = "\n".join(
            f"        listen 127.0.0.{i + 1}:{port};\n        listen 127.0.0.{i + 1}:{tls_port} ssl;"
            for i in range(HOSTS)
        )
        config = NGINX_CONFIG.format(
            user="user root;" if os.geteuid() == 0 else "",
            work=work.resolve(),
            files=files.resolve(),
            listens=listens,
            certificate=cert,
            key=key,
        )
        (work / "nginx.conf").write_text(config)
        command = [binary, "-c", str((work / "nginx.conf").resolve()), "-p", str(work.resolve())]
        server = Server("nginx", port, work, tls_port=tls_port)
    else:
        command = [
            sys.executable, "-m", "bench.servers", str(files), str(work), str(port),
            "--latency-ms", str(latency_ms),
        ]
        server = Server("python", port, work, latency_ms)
    server.process = subprocess.Popen(command, stderr=open(work / "server.stderr", "w"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((f"127.0.0.{HOSTS}", port), timeout=0.5):
                return server
        except OSError:
            if server.process.poll() is not None:
                break
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{server.kind} did not start: {(work / 'server.stderr').read_text()}")


# --- the Python server ----------------------------------------------------

_TYPES = {".jpg": b"image/jpeg", ".png": b"image/png"}


class _Log:
    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a", buffering=1)

    def write(self, status: int, path: str) -> None:
        self.handle.write(f"{time.time():.3f} {status} {path}\n")


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    files: Path,
    latency: float,
    log: _Log,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            path = parts[1] if len(parts) >= 2 else "/"
            if latency:
                await asyncio.sleep(latency)
            name = path.rsplit("/", 1)[-1]
            target = files / name
            if not path.startswith("/photos/") or "/" in name or not target.is_file():
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                log.write(404, path)
                continue
            size = target.stat().st_size
            kind = _TYPES.get(target.suffix, b"application/octet-stream")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + kind
                + b"\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n"
            )
            with open(target, "rb") as handle:
                await loop.sendfile(writer.transport, handle)
            log.write(200, path)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _serve(files: Path, work: Path, port: int, latency_ms: int) -> None:
    log = _Log(work / "access.log")
    latency = latency_ms / 1000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, files, latency, log)

    servers = [
        await asyncio.start_server(handle, f"127.0.0.{i + 1}", port, backlog=4096)
        for i in range(HOSTS)
    ]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve bench files on 127.0.0.1-16.")
    parser.add_argument("files", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--latency-ms", type=int, default=0)
    args = parser.parse_args()
    # The stdlib loop, not uvloop: uvloop has no loop.sendfile.
    asyncio.run(_serve(args.files, args.work, args.port, args.latency_ms))


if __name__ == "__main__":
    main()


# The benchmark's hosts are 127.x, which a crawl refuses by default
# (OPENIMAGES_BLOCK_PRIVATE_HOSTS): every crawl it starts passes this.
LOCAL_HOSTS_ALLOWED = ("-s", "OPENIMAGES_BLOCK_PRIVATE_HOSTS=False")
