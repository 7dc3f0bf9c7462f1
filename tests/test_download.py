"""Downloads from a local HTTP server: complete, cut off + Range resume, 503 retries, digest mismatch."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from mrdib_cli.data.sources import download
from mrdib_cli.errors import DataError, MissingInputError
from rawfixtures import FileServer

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def test_complete_download_verified(tmp_path: Path) -> None:
    seen = []
    with FileServer({"f.gz": DATA}) as srv:
        out = download(f"{srv.url}/f.gz", tmp_path / "f.gz", expected_sha256=SHA, expected_size=len(DATA),
                       retries=0, on_progress=lambda done, total: seen.append((done, total)))
    assert out.read_bytes() == DATA
    assert seen[-1] == (len(DATA), len(DATA))
    assert not (tmp_path / "f.gz.part").exists()


def test_cut_off_download_resumes_with_range(tmp_path: Path) -> None:
    with FileServer({"f.gz": DATA}) as srv:
        srv.cut["f.gz"] = 100_000
        out = download(f"{srv.url}/f.gz", tmp_path / "f.gz", expected_sha256=SHA, retries=3, backoff=0.01)
        assert out.read_bytes() == DATA
        ranges = [r for _, r in srv.requests]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1].split("=")[1].rstrip("-")) > 0  # resumed from the partial size, not from 0


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path: Path) -> None:
    (tmp_path / "f.gz.part").write_bytes(DATA[:1234])
    with FileServer({"f.gz": DATA}) as srv:
        download(f"{srv.url}/f.gz", tmp_path / "f.gz", retries=0)
        assert srv.requests == [("f.gz", "bytes=1234-")]
    assert (tmp_path / "f.gz").read_bytes() == DATA


def test_retry_after_503(tmp_path: Path) -> None:
    with FileServer({"f.gz": DATA}) as srv:
        srv.fail_503["f.gz"] = 2
        download(f"{srv.url}/f.gz", tmp_path / "f.gz", retries=3, backoff=0.01)
        assert len(srv.requests) == 3
    assert (tmp_path / "f.gz").read_bytes() == DATA


def test_503_forever_gives_up_with_raw_dir_hint(tmp_path: Path) -> None:
    with FileServer({"f.gz": DATA}) as srv:
        srv.fail_503["f.gz"] = 99
        with pytest.raises(MissingInputError, match="--raw-dir"):
            download(f"{srv.url}/f.gz", tmp_path / "f.gz", retries=2, backoff=0.01)
    assert not (tmp_path / "f.gz").exists()


def test_digest_mismatch_removes_file(tmp_path: Path) -> None:
    with FileServer({"f.gz": DATA}) as srv:
        with pytest.raises(DataError, match="sha256"):
            download(f"{srv.url}/f.gz", tmp_path / "f.gz", expected_sha256="0" * 64, retries=0)
    assert not (tmp_path / "f.gz").exists() and not (tmp_path / "f.gz.part").exists()


def test_size_mismatch(tmp_path: Path) -> None:
    with FileServer({"f.gz": DATA}) as srv:
        with pytest.raises(DataError, match="expected 5"):
            download(f"{srv.url}/f.gz", tmp_path / "f.gz", expected_size=5, retries=0)


def test_404_is_missing_input(tmp_path: Path) -> None:
    with FileServer({}) as srv:
        with pytest.raises(MissingInputError, match="HTTP 404"):
            download(f"{srv.url}/nope.gz", tmp_path / "nope.gz", retries=3, backoff=0.01)


def test_unreachable_server(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(MissingInputError, match="after 2 attempts"):
        download(f"http://127.0.0.1:{port}/f.gz", tmp_path / "f.gz", retries=1, backoff=0.01, timeout=2)
