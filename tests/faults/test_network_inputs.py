"""Network and path inputs: http(s) only, no path traversal, timeouts, size limits, decompression bombs."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mrdib_cli.errors import MissingInputError
from tests.faults.helpers import DEMO_ARGS, IMAGE_ARGS, leftovers, mrdib, ok, one_line_error


class _Server:
    """127.0.0.1 server: ``/big`` sends 50 kB (with or without Content-Length), ``/img/...`` a tiny PNG."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = b"x" * 50_000
                self.send_response(200)
                if not self.path.endswith("nolength"):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _baby_raw(reference_demo, dest: Path) -> Path:
    src = next((reference_demo[0] / "raw" / "demo").glob("*/"))
    dest.mkdir()
    shutil.copy(src / "reviews_Demo_5.json.gz", dest / "reviews_Baby_5.json.gz")
    shutil.copy(src / "meta_Demo.json.gz", dest / "meta_Baby.json.gz")
    return dest


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_only_http_urls_are_fetched(workdir: Path, reference_demo, tmp_path: Path, scheme: str) -> None:
    raw = _baby_raw(reference_demo, tmp_path / "mirror")
    url = f"file://{raw}" if scheme == "file" else "ftp://127.0.0.1:9/amazon"
    one_line_error(mrdib(workdir, "prepare", "baby", "--base-url", url), "http", code=2)
    assert not (workdir / "datasets" / "baby").exists()
    assert not list((workdir / "raw").rglob("*.gz")) if (workdir / "raw").exists() else True


@pytest.mark.parametrize("path", ["big", "big-nolength"])
def test_download_size_limit(workdir: Path, server: _Server, path: str) -> None:
    """A file over MRDIB_MAX_DOWNLOAD_BYTES is refused (declared or streamed) and its partial file removed."""
    p = mrdib(workdir, "prepare", "baby", "--base-url", f"{server.url}/{path}", MRDIB_MAX_DOWNLOAD_BYTES="10000",
              MRDIB_DOWNLOAD_RETRIES="0")
    one_line_error(p, "download limit", code=1)
    assert leftovers(workdir) == []


def test_download_timeout_is_bounded(tmp_path: Path) -> None:
    """A server that accepts and never answers: the download gives up after its timeout, not never."""
    from mrdib_cli.data.sources import download

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        t0 = time.monotonic()
        with pytest.raises(MissingInputError, match="cannot download"):
            download(f"http://127.0.0.1:{sock.getsockname()[1]}/x.gz", tmp_path / "x.gz", retries=1,
                     backoff=0.01, timeout=0.5)
        assert time.monotonic() - t0 < 10
    finally:
        sock.close()


def test_image_urls_cannot_escape_the_cache(tmp_path: Path, server: _Server) -> None:
    """File names come from a hash of the URL; non-http schemes are refused before any request."""
    from mrdib_cli.features.images_io import fetch_images

    cache = tmp_path / "cache"
    urls = [f"{server.url}/../../../../etc/passwd", f"{server.url}/%2e%2e/%2e%2e/escape.png",
            "file:///etc/passwd", "ftp://127.0.0.1/x.png", "data:image/png;base64,AAAA", "/etc/passwd"]
    refs = fetch_images(urls, cache, workers=2, timeout=2.0, retries=0, max_bytes=1 << 20)
    for r in refs[2:]:
        assert r.status == "failed" and r.path is None, r
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.parent == cache for p in written), written
    assert all(len(p.stem) == 40 for p in written)


@pytest.mark.parametrize("command", [
    [*DEMO_ARGS, "--name", "../../escaped"],
    [*DEMO_ARGS, "--name", "a/b"],
    ["resplit", "--name", "../escaped"],
    ["eval", "--run", "../../escaped"],
])
def test_names_cannot_escape_the_workdir(demo_wd: Path, command: list[str]) -> None:
    before = sorted(p.name for p in demo_wd.parent.iterdir())
    one_line_error(mrdib(demo_wd, *command), "invalid", code=2)
    assert sorted(p.name for p in demo_wd.parent.iterdir()) == before
    assert not list(demo_wd.rglob("*escaped*"))


def _bomb_png(side: int = 50_000) -> bytes:
    """A PNG that declares side x side pixels (2.5 G) in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
            + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_end_to_end(demo_wd: Path, tmp_path: Path) -> None:
    """One image declares 2.5 G pixels: that item fails with a reason, the others are encoded, memory stays low."""
    card = json.loads((demo_wd / "datasets" / "demo" / "dataset.json").read_text())
    imgs = tmp_path / "images"
    shutil.copytree(card["image_dir"], imgs)
    victim = sorted(imgs.glob("*.png"))[0]
    victim.write_bytes(_bomb_png())
    p = ok(mrdib(demo_wd, *IMAGE_ARGS, "--image-dir", str(imgs)))
    man = json.loads(next((demo_wd / "datasets/demo/manifests").glob("features-image-*.json")).read_text())
    cov = man["extra"]["coverage"]
    assert cov["failed"] == 1 and cov["ok"] == 39, (cov, p.stderr)
    assert any("pixel" in r.lower() or "bomb" in r.lower() for r in cov["reasons"]), cov
