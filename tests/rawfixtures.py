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
                name = self.path.split("/files/", 1)[-1]  # sub-folders kept (the 2023 mirror layout)
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


def review_2023(user: str, parent: str, ts_ms: int, rating: float = 5.0, variant: str | None = None) -> dict[str, Any]:
    """One Amazon Reviews 2023 review line with the release's field names and nesting."""
    return {"rating": rating, "title": "Works great", "text": "Bought it for my son.<br />Recommend.",
            "images": [{"small_image_url": "https://m.media-amazon.com/images/I/s.jpg",
                        "medium_image_url": "https://m.media-amazon.com/images/I/m.jpg",
                        "large_image_url": "https://m.media-amazon.com/images/I/l.jpg", "attachment_type": "IMAGE"}],
            "asin": variant or parent, "parent_asin": parent, "user_id": user, "timestamp": ts_ms,
            "helpful_vote": 2, "verified_purchase": True}


def meta_2023(parent: str, i: int, images: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One Amazon Reviews 2023 metadata line (lists for features/description/images, a details dict)."""
    return {"main_category": "Baby", "title": f"Soft blanket {i}", "average_rating": 4.5, "rating_number": 12,
            "features": ["100% cotton", f"size {i} cm"], "description": ["A soft blanket.", "Machine washable."],
            "price": 19.99 if i % 2 else None,
            "images": images if images is not None else [
                {"thumb": f"https://m.media-amazon.com/images/I/{i}._SS40_.jpg",
                 "large": f"https://m.media-amazon.com/images/I/{i}.jpg", "variant": "MAIN",
                 "hi_res": f"https://m.media-amazon.com/images/I/{i}._SL1500_.jpg" if i % 3 else None}],
            "videos": [{"title": "demo", "url": "https://www.amazon.com/vdp/x", "user_id": ""}],
            "store": "Cozy Co", "categories": ["Baby Products", "Nursery", "Bedding"],
            "details": {"Material": "Cotton", "Item Weight": "1 pound"}, "parent_asin": parent,
            "bought_together": None}


def make_raw_2023(folder: Path, category: str = "Baby_Products", n_users: int = 40, n_items: int = 20,
                  per_user: int = 7, seed: int = 0, gz: bool = True) -> dict[str, Path]:
    """Small 2023 reviews/meta JSON Lines files (gzipped like the download server, or plain like the hub)."""
    import json

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    reviews = [review_2023(f"AG{u:05d}", f"P{i:05d}", int(1_600_000_000_000 + rng.integers(0, 10**10)),
                           float(rng.integers(1, 6)), variant=f"V{i:05d}")
               for u in range(n_users) for i in rng.choice(n_items, per_user, replace=False)]
    metas = [meta_2023(f"P{i:05d}", i) for i in range(n_items)]
    if not gz:
        rp, mp = folder / f"{category}.jsonl", folder / f"meta_{category}.jsonl"
        rp.write_text("".join(json.dumps(r) + "\n" for r in reviews), encoding="utf-8")
        mp.write_text("".join(json.dumps(m) + "\n" for m in metas), encoding="utf-8")
        return {"reviews": rp, "meta": mp}
    return {"reviews": write_reviews(folder / f"{category}.jsonl.gz", reviews),
            "meta": write_reviews(folder / f"meta_{category}.jsonl.gz", metas)}
