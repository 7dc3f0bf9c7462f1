"""Image finding, downloading and decoding: every bad input becomes a per-item status, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mrdib_cli.features.images_io import (ImageRef, fetch_image, fetch_images, load_image, refs_from_dir,
                                          url_cache_name)

from tests.features.helpers import awkward_bytes, good_image, png_bytes
from tests.features.httpserver import ImageServer


@pytest.mark.parametrize("kind", ["good-rgb", "palette-transparent", "rgba", "cmyk-jpeg", "greyscale"])
def test_modes_decode_to_rgb(tmp_path: Path, kind: str) -> None:
    ext, data = awkward_bytes(kind)
    p = tmp_path / f"x{ext}"
    p.write_bytes(data)
    img, reason = load_image(p)
    assert reason == "" and img is not None
    assert img.mode == "RGB" and img.size == (40, 48)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    p = tmp_path / "t.png"
    transparent.save(p)
    img, _ = load_image(p)
    assert img.getpixel((3, 3)) == (255, 255, 255)  # plain convert("RGB") would give black


@pytest.mark.parametrize("kind,needle", [("corrupt", "unrecognised"), ("truncated", "corrupt"),
                                         ("zero-byte", "zero-byte"), ("html-as-png", "unrecognised")])
def test_bad_files_are_reported_not_raised(tmp_path: Path, kind: str, needle: str) -> None:
    ext, data = awkward_bytes(kind)
    p = tmp_path / f"x{ext}"
    p.write_bytes(data)
    img, reason = load_image(p)
    assert img is None and needle in reason


def test_decompression_bomb_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("L", (400, 400)).save(p)
    assert load_image(p, max_pixels=100_000)[0] is None
    assert "too many pixels" in load_image(p, max_pixels=100_000)[1]
    assert load_image(p, max_pixels=200_000)[0] is not None


def test_unsupported_format_file(tmp_path: Path) -> None:
    p = tmp_path / "x.png"
    p.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    img, reason = load_image(p)
    assert img is None and reason


def test_refs_from_dir_by_asin_then_index(tmp_path: Path) -> None:
    (tmp_path / "B001.jpg").write_bytes(b"x")
    (tmp_path / "B001.png").write_bytes(b"x")  # same stem: extension order decides (jpg first)
    (tmp_path / "1.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    refs = refs_from_dir(tmp_path, ["B001", "B002", "notes"])
    assert refs[0].path.name == "B001.jpg"
    assert refs[1].path.name == "1.png"  # no B002 file: falls back to the item index
    assert refs[2].path is None and refs[2].status == "missing"


def test_cache_names_never_come_from_the_url() -> None:
    name = url_cache_name("http://x/../../etc/passwd?a=/b")
    assert "/" not in name and ".." not in name and len(name) == 44


def test_download_from_local_server(tmp_path: Path) -> None:
    ok = png_bytes(good_image(7))
    routes = {
        "/ok.png": (200, "image/png", ok, {}),
        "/page": (200, "text/html; charset=utf-8", b"<html>captcha</html>", {}),
        "/big.jpg": (200, "image/jpeg", b"\xff" * 20000, {}),
        "/flaky.png": (200, "image/png", ok, {}),
        "/to-file": (302, "text/html", b"", {"Location": "file:///etc/passwd"}),
    }
    cache = tmp_path / "cache"
    with ImageServer(routes) as srv:
        urls = [srv.url("/ok.png"), srv.url("/missing.png"), srv.url("/page"), srv.url("/big.jpg"),
                srv.url("/flaky.png"), srv.url("/to-file"), "ftp://example.com/x.png", None, ""]
        refs = fetch_images(urls, cache, workers=4, timeout=5, retries=2, max_bytes=10000, backoff=0.01)
        assert refs[0].status == "ok" and refs[0].path.read_bytes() == ok
        assert refs[0].path.parent == cache
        assert (refs[1].status, refs[1].reason) == ("failed", "HTTP 404")
        assert refs[2].status == "failed" and "text/html" in refs[2].reason
        assert refs[3].status == "failed" and "too large" in refs[3].reason
        assert refs[4].status == "ok" and srv.hits["/flaky.png"] == 2  # 503 retried
        assert refs[5].status == "failed"
        assert refs[6].status == "failed" and "scheme" in refs[6].reason
        assert refs[7].status == refs[8].status == "missing"
        assert srv.hits["/missing.png"] == 1  # a 404 is not retried
        # cached: a second fetch does not hit the server
        again = fetch_image(srv.url("/ok.png"), cache)
        assert again.path == refs[0].path and srv.hits["/ok.png"] == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_unreachable_server_fails_after_retries(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    ref = fetch_image(f"http://127.0.0.1:{port}/x.png", tmp_path, timeout=1, retries=1, backoff=0.01)
    assert ref == ImageRef(None, "failed", ref.reason) and "download failed" in ref.reason


@pytest.mark.parametrize("size,img_size", [(224, (500, 375)), (32, (40, 48)), (224, (100, 300))])
def test_thread_free_preprocess_is_bit_identical_to_open_clip(size: int, img_size: tuple[int, int]) -> None:
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from mrdib_cli.features.image import ThreadFreePreprocess

    ref = image_transform_v2(PreprocessCfg(size=size), is_train=False)
    fast = ThreadFreePreprocess(ref)
    assert fast.ok
    img = good_image(3, img_size)
    a, b = ref(img), fast(img)
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (3, size, size)
    assert torch.equal(a, b)
