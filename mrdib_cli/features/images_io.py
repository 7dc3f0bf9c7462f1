"""Finding, downloading and safely decoding item images.

Images come from one of three places, in this order of precedence:

1. ``--image-dir DIR``: files named ``<asin>.<ext>`` or ``<item_idx>.<ext>``;
2. the dataset card's ``image_dir`` (the demo dataset ships its PNGs that way);
3. ``items.parquet`` ``image_url``: downloaded into ``<workdir>/raw/images/`` under a name derived from the
   SHA-256 of the URL (never from the URL text itself, so no path traversal or odd characters), with bounded
   concurrency, retries with backoff on transient errors, a size limit and timeouts.

Every problem is recorded per item (``missing`` when there is nothing to load, ``failed`` with a reason
when there is something but it is unusable) so one bad image never stops a 20k-item extraction.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mrdib_cli import __version__
from mrdib_cli.workspace import TMP_PREFIX

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # ~6300x6300; product photos are far smaller
USER_AGENT = f"mrdib/{__version__} (image fetch for feature extraction)"


@dataclass(frozen=True)
class ImageRef:
    """Where one item's image is: a local path, or nothing plus the reason (status ``missing``/``failed``)."""

    path: Path | None
    status: str = "ok"  # ok (a file to decode) | missing | failed
    reason: str = ""


# --------------------------------------------------------------------------------------------- local dirs
def index_image_dir(image_dir: Path) -> dict[str, Path]:
    """Map file stems to image files in ``image_dir`` (one listing, no per-item stat calls).

    When several files share a stem the extension order of :data:`IMAGE_EXTS` decides, so the choice is
    deterministic.
    """
    rank = {e: i for i, e in enumerate(IMAGE_EXTS)}
    found: dict[str, Path] = {}
    for entry in os.scandir(image_dir):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        p = Path(entry.path)
        ext = p.suffix.lower()
        if ext not in rank:
            continue
        old = found.get(p.stem)
        if old is None or rank[ext] < rank[old.suffix.lower()]:
            found[p.stem] = p
    return found


def refs_from_dir(image_dir: Path, asins: Sequence[str | None]) -> list[ImageRef]:
    """One :class:`ImageRef` per item: file named by ASIN first, else by item index."""
    index = index_image_dir(image_dir)
    refs = []
    for i, asin in enumerate(asins):
        p = index.get(asin) if asin else None
        if p is None:
            p = index.get(str(i))
        refs.append(ImageRef(p) if p is not None else ImageRef(None, "missing", "no image file"))
    return refs


def image_dir_fingerprint(image_dir: Path) -> str:
    """Cheap identity of an image folder (names, sizes, mtimes) for cache keys; hashing 20k JPEGs is not."""
    h = hashlib.sha256()
    for stem, p in sorted(index_image_dir(image_dir).items()):
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "listing:" + h.hexdigest()


# --------------------------------------------------------------------------------------------- download
class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http/https (never file:, ftp:, data:)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-http(s) URL refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SafeRedirect)


def url_cache_name(url: str) -> str:
    """Cache file name of a URL: a hash, so nothing in the URL reaches the file system."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:40] + ".img"


class _Permanent(Exception):
    """A failure that retrying will not fix (404, HTML page, too large)."""


def _fetch_once(url: str, dest: Path, timeout: float, max_bytes: int) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    try:
        resp = _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code in (408, 425, 429) or e.code >= 500:
            raise
        raise _Permanent(f"HTTP {e.code}") from None
    with resp:
        ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
            raise _Permanent(f"not an image (Content-Type {ctype})")
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise _Permanent(f"too large ({int(length)} bytes > {max_bytes})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}.{os.getpid()}.{id(resp)}")
        try:
            total = 0
            with open(tmp, "wb") as fh:
                while chunk := resp.read(1 << 16):
                    total += len(chunk)
                    if total > max_bytes:
                        raise _Permanent(f"too large (> {max_bytes} bytes)")
                    fh.write(chunk)
            if total == 0:
                raise _Permanent("empty response")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def fetch_image(url: str | None, cache_dir: Path, *, timeout: float = 20.0, retries: int = 3,
                max_bytes: int = DEFAULT_MAX_BYTES, backoff: float = 0.5) -> ImageRef:
    """Download one image into the cache (or find it there) and say what happened; never raises."""
    if url is None or not str(url).strip():
        return ImageRef(None, "missing", "no image URL")
    url = str(url).strip()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return ImageRef(None, "failed", f"unsupported URL scheme '{scheme or '-'}'")
    dest = cache_dir / url_cache_name(url)
    if dest.exists() and dest.stat().st_size > 0:
        return ImageRef(dest)
    last = ""
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, dest, timeout, max_bytes)
            return ImageRef(dest)
        except _Permanent as e:
            return ImageRef(None, "failed", str(e))
        except (urllib.error.URLError, OSError, ValueError) as e:  # timeouts, resets, 5xx, bad URLs
            last = str(getattr(e, "reason", None) or e) or type(e).__name__
            if isinstance(e, ValueError):
                break
        if attempt < retries:
            time.sleep(backoff * (2 ** attempt))
    return ImageRef(None, "failed", f"download failed: {last}"[:200])


def fetch_images(urls: Sequence[str | None], cache_dir: Path, *, workers: int = 8,
                 on_done: Callable[[int], None] | None = None, **kw: float) -> list[ImageRef]:
    """Download many images with at most ``workers`` concurrent requests; results in input order."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    refs: list[ImageRef | None] = [None] * len(urls)

    def job(i: int) -> None:
        refs[i] = fetch_image(urls[i], cache_dir, **kw)  # type: ignore[arg-type]
        if on_done is not None:
            on_done(1)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mrdib-img") as pool:
        list(pool.map(job, range(len(urls))))
    return [r if r is not None else ImageRef(None, "failed", "not downloaded") for r in refs]


# --------------------------------------------------------------------------------------------- decode
def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for any PIL mode: alpha and palette transparency are composited on white (product shots).

    Plain ``convert("RGB")`` would turn transparent backgrounds black, which moves CLIP features.
    """
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")  # 16-bit greyscale to 8-bit
    elif img.mode == "F":
        img = img.convert("L")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image | None, str]:
    """Decode an image fully, or return ``(None, reason)``; never raises for bad files.

    Images above ``max_pixels`` are refused before decoding (decompression-bomb guard); truncated files
    fail instead of being silently padded (``LOAD_TRUNCATED_IMAGES`` stays off).
    """
    try:
        if path.stat().st_size == 0:
            return None, "zero-byte file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    return None, f"too many pixels ({w}x{h} > {max_pixels})"
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # first frame of animations
                img.load()
                rgb = _to_rgb(img)
        return rgb, ""
    except UnidentifiedImageError:
        return None, "unsupported or unrecognised image format"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "decompression-bomb limit exceeded"
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated/corrupt streams
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"corrupt image ({msg})"[:200]
    except Exception as e:  # noqa: BLE001 - a decoder bug must not stop the extraction
        return None, f"decode error ({type(e).__name__})"

