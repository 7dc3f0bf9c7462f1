"""Where raw datasets come from: the Amazon 2014 registry and a resumable, verified HTTP download.

The 2014 review release (McAuley et al.) publishes, per category, the 5-core review file
``reviews_<Category>_5.json.gz`` and the product metadata ``meta_<Category>.json.gz``. Downloads resume
partial files with HTTP Range requests, retry 5xx answers and timeouts with exponential backoff, check
the size (and the digest where one is known) and are moved into place only when complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mrdib_cli.errors import DataError, MissingInputError, UsageError

DEFAULT_BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
BASE_URL_ENV = "MRDIB_AMAZON_BASE_URL"


@dataclass(frozen=True)
class AmazonCategory:
    """One category of the Amazon 2014 5-core family."""

    name: str  # mrdib's short name (``mrdib prepare <name>``)
    category: str  # the file-name spelling used by the release
    n_reviews_5core: int | None = None  # known line count of the 5-core review file, for the listing

    @property
    def reviews_file(self) -> str:
        return f"reviews_{self.category}_5.json.gz"

    @property
    def meta_file(self) -> str:
        return f"meta_{self.category}.json.gz"

    @property
    def files(self) -> tuple[str, str]:
        return (self.reviews_file, self.meta_file)

    release = "amazon2014"  # names the raw/ subfolder and selects the parser in prepare

    @property
    def default_name(self) -> str:
        return self.name

    def url_for(self, fname: str, override: str | None = None) -> str:
        return f"{base_url(override)}/{fname}"


# The 24 categories of the 2014 release. Counts are given only where the MMRec notes confirm them.
AMAZON_2014: tuple[AmazonCategory, ...] = (
    AmazonCategory("baby", "Baby", 160792),
    AmazonCategory("sports", "Sports_and_Outdoors", 296337),
    AmazonCategory("clothing", "Clothing_Shoes_and_Jewelry", 278677),
    AmazonCategory("electronics", "Electronics", 1689188),
    AmazonCategory("books", "Books"),
    AmazonCategory("movies", "Movies_and_TV"),
    AmazonCategory("cds", "CDs_and_Vinyl"),
    AmazonCategory("home", "Home_and_Kitchen"),
    AmazonCategory("kindle", "Kindle_Store"),
    AmazonCategory("cell-phones", "Cell_Phones_and_Accessories"),
    AmazonCategory("health", "Health_and_Personal_Care"),
    AmazonCategory("toys", "Toys_and_Games"),
    AmazonCategory("video-games", "Video_Games"),
    AmazonCategory("tools", "Tools_and_Home_Improvement"),
    AmazonCategory("beauty", "Beauty"),
    AmazonCategory("apps", "Apps_for_Android"),
    AmazonCategory("office", "Office_Products"),
    AmazonCategory("pet-supplies", "Pet_Supplies"),
    AmazonCategory("automotive", "Automotive"),
    AmazonCategory("grocery", "Grocery_and_Gourmet_Food"),
    AmazonCategory("garden", "Patio_Lawn_and_Garden"),
    AmazonCategory("digital-music", "Digital_Music"),
    AmazonCategory("musical-instruments", "Musical_Instruments"),
    AmazonCategory("instant-video", "Amazon_Instant_Video"),
)
ALIASES = {"elec": "electronics", "cell_phones": "cell-phones", "video_games": "video-games"}
DEMO = "demo"

# sha256 of the published files, where known (the release publishes none; the demo files have them)
KNOWN_DIGESTS: dict[str, str] = {}


def dataset_names() -> list[str]:
    return [DEMO] + [c.name for c in AMAZON_2014]


def lookup(name: str) -> AmazonCategory:
    """A category by short name, alias or release spelling (case-insensitive)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    for c in AMAZON_2014:
        if key in (c.name, c.category.lower()):
            return c
    raise UsageError(f"unknown dataset '{name}'; valid names: {', '.join(dataset_names())} "
                     "(see 'mrdib prepare --list')")


def base_url(override: str | None = None) -> str:
    return (override or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


# ------------------------------------------------------------------------------------------- download
ProgressCb = Callable[[int, int | None], None]  # (bytes so far, total or None)
MAX_BYTES_ENV = "MRDIB_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_BYTES = 64 << 30  # the largest Amazon 2014 file (Books metadata) is far below this

RETRYABLE = (socket.timeout, TimeoutError, ConnectionError, http.client.IncompleteRead,
             http.client.RemoteDisconnected, urllib.error.URLError, OSError)


class _Retry(Exception):
    """A transient failure: try again after a backoff."""


def _total_from_headers(resp: http.client.HTTPResponse, start: int) -> int | None:
    cr = resp.headers.get("Content-Range")
    if cr:
        m = re.match(r"bytes \d+-\d+/(\d+)", cr)
        if m:
            return int(m.group(1))
    cl = resp.headers.get("Content-Length")
    return start + int(cl) if cl is not None else None


def _too_big(url: str, part: Path, size: int, max_bytes: int) -> DataError:
    part.unlink(missing_ok=True)
    return DataError(f"{url}: larger than the download limit ({size} > {max_bytes} bytes); the partial file "
                     f"was removed; raise {MAX_BYTES_ENV} if the file is really that large")


def _fetch_once(url: str, part: Path, timeout: float, on_progress: ProgressCb | None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> int | None:
    """One request, appending to ``part`` from its current size; returns the expected total size."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "mrdib", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part file is complete (checked by caller)
            return have
        if e.code >= 500 or e.code == 429:
            raise _Retry(f"HTTP {e.code}") from None
        raise MissingInputError(f"{url}: HTTP {e.code} {e.reason}; check --base-url or use --raw-dir") from None
    with resp:
        if have and resp.status == 200:  # the server ignored Range: start over
            have = 0
        total = _total_from_headers(resp, have)
        if total is not None and total > max_bytes:
            raise _too_big(url, part, total, max_bytes)
        with open(part, "ab" if have else "wb") as fh:
            got = have
            while True:
                block = resp.read(1 << 16)
                if not block:
                    break
                fh.write(block)
                got += len(block)
                if got > max_bytes:  # a server that lies about (or omits) the length
                    fh.close()
                    raise _too_big(url, part, got, max_bytes)
                if on_progress:
                    on_progress(got, total)
        if total is not None and got < total:
            raise _Retry(f"connection closed after {got} of {total} bytes")
        return total


def download(url: str, dest: Path, *, expected_size: int | None = None, expected_sha256: str | None = None,
             retries: int | None = None, backoff: float | None = None, timeout: float = 30.0,
             on_progress: ProgressCb | None = None, raw_dir_hint: str = "",
             on_retry: Callable[[str], None] | None = None) -> Path:
    """Download ``url`` to ``dest``: resume, retry with backoff, verify, then rename into place.

    The partial file ``<dest>.part`` survives failures, so the next call resumes where this one stopped.
    ``retries``/``backoff`` default to ``MRDIB_DOWNLOAD_RETRIES`` (5) and ``MRDIB_DOWNLOAD_BACKOFF`` (1 s).
    A host name that does not resolve fails at once (retrying cannot help); other network errors are retried,
    each wait announced through ``on_retry``.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):  # urllib would also read file:, ftp: and data: URLs
        raise UsageError(f"only http(s) URLs are downloaded, got '{url}'; for files you already have use "
                         "--raw-dir DIR")
    max_bytes = int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    retries = int(os.environ.get("MRDIB_DOWNLOAD_RETRIES", 5)) if retries is None else retries
    backoff = float(os.environ.get("MRDIB_DOWNLOAD_BACKOFF", 1.0)) if backoff is None else backoff
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last = ""
    for attempt in range(retries + 1):
        try:
            total = _fetch_once(url, part, timeout, on_progress, max_bytes)
            break
        except _Retry as e:
            last = str(e)
        except MissingInputError:
            raise
        except RETRYABLE as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, socket.gaierror):  # no DNS answer will come by waiting: offline or a typo
                host = urllib.parse.urlsplit(url).hostname
                raise MissingInputError(f"cannot resolve host '{host}' (offline, or a wrong --base-url); "
                                        f"{raw_dir_hint or 'pass the files with --raw-dir DIR'}") from None
            last = f"{type(e).__name__}: {reason}"
        if attempt < retries:
            wait = min(backoff * 2 ** attempt, 30.0)
            if on_retry:
                on_retry(f"{dest.name}: {last}; retry {attempt + 1} of {retries} in {wait:.0f} s")
            time.sleep(wait)
    else:
        hint = raw_dir_hint or f"download {dest.name} yourself and pass its folder with --raw-dir DIR"
        raise MissingInputError(f"cannot download {url} after {retries + 1} attempts ({last}); {hint}")
    size = part.stat().st_size
    if (expected_size is not None and size != expected_size) or (total is not None and size != total):
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: downloaded {size} bytes but expected {expected_size or total}; "
                        "the partial file was removed, run the command again")
    if expected_sha256 is not None:
        got = _sha256(part)
        if got != expected_sha256.removeprefix("sha256:"):
            part.unlink(missing_ok=True)
            raise DataError(f"{url}: sha256 {got[:16]}... does not match the expected "
                            f"{expected_sha256.removeprefix('sha256:')[:16]}...; the file was removed; "
                            "check --base-url (a mirror may serve another version)")
    os.replace(part, dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
