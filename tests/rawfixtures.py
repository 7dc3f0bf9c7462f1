"""Generated raw Amazon 2014 files and a local HTTP server for prepare/download tests (no network)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from mrdib_cli.data.rawfmt import write_meta, write_reviews


def make_raw(folder: Path, category: str = "Baby", n_users: int = 60, n_items: int = 30, per_user: int = 8,
             seed: int = 0, extra_lines: list[str] | None = None) -> dict[str, Path]:
    """Small reviews/meta files: every user reviews ``per_user`` random items (plus optional raw lines)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    reviews: list[dict[str, Any]] = []
    for u in range(n_users):
        for i in rng.choice(n_items, per_user, replace=False):
            reviews.append({"reviewerID": f"U{u:04d}", "asin": f"B{i:05d}", "overall": float(rng.integers(1, 6)),
                            "unixReviewTime": int(1_300_000_000 + rng.integers(0, 10**7)),
                            "reviewText": "ok \u00e9\u4e2d"})
    rp = write_reviews(folder / f"reviews_{category}_5.json.gz", reviews)
    metas = [{"asin": f"B{i:05d}", "title": f"Item {i} \u00e9", "categories": [["Baby", "Toys"]],
              "imUrl": f"http://x/{i}.jpg", "related": {"also_bought": ["B1", "B2"]}} for i in range(n_items)]
    mp = write_meta(folder / f"meta_{category}.json.gz", metas)
    if extra_lines:
        import gzip

        with gzip.open(rp, "at", encoding="utf-8") as fh:
            for line in extra_lines:
                fh.write(line + "\n")
    return {"reviews": rp, "meta": mp}


class FileServer:
    """Serves bytes over HTTP on 127.0.0.1 with Range support and scripted failures.

    ``fail_503[name] = n`` answers the first n requests with 503; ``cut[name] = nbytes`` makes the first
    full request send only nbytes and drop the connection.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.fail_503: dict[str, int] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if server.fail_503.get(name, 0) > 0:
                    server.fail_503[name] -= 1
                    self.send_error(503, "busy")
                    return
                if name not in server.files:
                    self.send_error(404, "not found")
                    return
                data = server.files[name]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.cut and not rng:
                    self.wfile.write(body[: server.cut.pop(name)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
