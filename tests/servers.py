"""File servers on loopback for the remote-reading tests and benchmark: a real XRootD server
(Debian's xrootd-server) and an HTTP server that answers byte ranges."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exported_directory() -> Path:
    """A directory that the XRootD server, which runs as ``nobody`` when we are root, can read
    (pytest's own temporary directories are private to their user)."""
    directory = Path(tempfile.mkdtemp(prefix="hepdask-xrootd-"))
    directory.chmod(0o755)
    return directory


@contextlib.contextmanager
def xrootd(root: Path) -> Iterator[str]:
    """Serve ``root``'s ``store/`` as ``/store`` on 127.0.0.1; yields ``root://127.0.0.1:PORT``."""
    binary = shutil.which("xrootd")
    if binary is None:
        raise FileNotFoundError("xrootd is not installed (Debian: apt-get install xrootd-server)")
    port = free_port()
    run = Path(tempfile.mkdtemp(prefix="hepdask-xrootd-run-"))
    user = []
    if os.geteuid() == 0:  # xrootd refuses to run as root
        run.chmod(0o755)
        os.chown(run, pwd.getpwnam("nobody").pw_uid, -1)
        user = ["-R", "nobody"]
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    config = run / "xrootd.cfg"
    config.write_text(f"xrd.port {port}\nxrd.network nodnr\nall.adminpath {run}\n"
                      f"oss.localroot {root}\nall.export /store\n")
    proc = subprocess.Popen([binary, "-c", str(config), "-l", str(run / "xrootd.log"), *user],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, run / "xrootd.log")
        yield f"root://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(run, ignore_errors=True)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"xrootd exited with {proc.returncode}:\n{text[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"xrootd did not listen on port {port}")


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single byte ranges (``Range: bytes=a-b``), as grid HTTP servers answer."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start = int(match[1])
        stop = min(int(match[2]) + 1 if match[2] else size, size)
        if start >= size:
            self.send_error(416)
            return None
        file = path.open("rb")
        file.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Limited(file, stop - start)

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


class _Limited:
    """A file object that ``copyfile`` reads only ``n`` bytes of."""

    def __init__(self, file, n: int):
        self.file, self.left = file, n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.file.read(size)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def http(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1; yields ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
