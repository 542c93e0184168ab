"""Tests of sfsr.data.download against a real local HTTP server (127.0.0.1, ephemeral port)."""

from __future__ import annotations

import hashlib
import http.server
import io as _io
import json
import os
import socket
import stat
import tarfile
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sfsr.data.download import extract_archive, fetch, is_archive
from sfsr.errors import ChecksumError, DataError


# --------------------------------------------------------------------------------------- server
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.root`` with Range support; can cut or ignore Range on demand."""

    protocol_version = "HTTP/1.1"
    timeout = 5  # a stuck client connection cannot hold a handler thread for long

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        srv = self.server
        path = srv.root / self.path.lstrip("/").split("?")[0]
        rng = self.headers.get("Range")
        with srv.lock:
            srv.requests.append({"path": self.path, "range": rng})
        if not path.is_file():
            self._reply(404, b"not found", "text/plain")
            return
        data = path.read_bytes()
        start = 0
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self._reply(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                return
        status = 206 if start else 200
        body = data[start:]
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
        with srv.lock:
            srv.requests[-1]["status"] = status
            cut = srv.cut_after
            if srv.cut_once:
                srv.cut_after = None
        self.send_response(status)
        self.send_header("Content-Type", srv.content_type)
        self.send_header("Content-Length", str(len(body)))
        if not srv.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if cut is not None:  # announce the full length, send less, drop the connection
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _reply(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A ThreadingHTTPServer on 127.0.0.1 serving ``tmp_path/srv``; shut down after the test."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    root = tmp_path / "srv"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.root = root
    srv.lock = threading.Lock()
    srv.requests = []
    srv.cut_after = None
    srv.cut_once = True
    srv.ignore_range = False
    srv.content_type = "application/octet-stream"
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _put(server, name: str, data: bytes) -> str:
    (server.root / name).write_bytes(data)
    return f"{server.base}/{name}"


FAST = {"progress": False, "backoff": 0.0, "timeout": 10}


# --------------------------------------------------------------------------------------- fetch
def test_good_sha256_and_md5(server, tmp_path):
    data = _payload()
    url = _put(server, "a.bin", data)
    out = fetch(url, tmp_path / "dl" / "a.bin", sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert out.read_bytes() == data
    out2 = fetch(url, tmp_path / "dl2" / "a.bin", md5=hashlib.md5(data).hexdigest().upper(), **FAST)
    assert out2.read_bytes() == data
    assert not (tmp_path / "dl" / "a.bin.part").exists()


def test_bad_checksum_deletes_download(server, tmp_path):
    data = _payload()
    url = _put(server, "a.bin", data)
    wrong = hashlib.sha256(b"something else").hexdigest()
    dest = tmp_path / "dl" / "a.bin"
    with pytest.raises(ChecksumError) as err:
        fetch(url, dest, sha256=wrong, **FAST)
    msg = str(err.value)
    assert wrong in msg and hashlib.sha256(data).hexdigest() in msg and url in msg
    assert "config.yaml" in msg
    assert not dest.exists() and not dest.with_suffix(".bin.part").exists()
    with pytest.raises(ChecksumError, match="md5"):
        fetch(url, dest, md5="0" * 32, **FAST)
    assert not dest.exists()


def test_interrupted_transfer_is_resumed_with_range(server, tmp_path):
    data = _payload()
    url = _put(server, "big.bin", data)
    server.cut_after = 100_000
    dest = fetch(url, tmp_path / "big.bin", sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == "bytes=100000-"
    assert server.requests[1]["status"] == 206


def test_server_without_range_restarts_cleanly(server, tmp_path):
    data = _payload()
    url = _put(server, "big.bin", data)
    server.cut_after = 120_000
    server.ignore_range = True
    dest = fetch(url, tmp_path / "big.bin", sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data  # not the first 120 kB twice
    assert server.requests[1]["range"] == "bytes=120000-"
    assert server.requests[1]["status"] == 200


def test_retries_exhausted_is_a_clear_error(server, tmp_path):
    data = _payload()
    url = _put(server, "big.bin", data)
    server.cut_after, server.cut_once = 1000, False
    server.ignore_range = True
    dest = tmp_path / "big.bin"
    with pytest.raises(DataError) as err:
        fetch(url, dest, retries=2, **FAST)
    msg = str(err.value)
    assert url in msg and f"of {len(data)} bytes" in msg and "3 attempts" in msg
    assert len(server.requests) == 3
    assert not dest.exists()
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == 1000 and str(part) in msg  # kept for a later resume


def test_connection_refused_is_retried_then_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "*")
    with socket.socket() as sock:  # a port on 127.0.0.1 that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(DataError, match="2 attempts") as err:
        fetch(url, tmp_path / "x.zip", retries=1, **FAST)
    assert url in str(err.value) and "re-run" in str(err.value)
    assert not (tmp_path / "x.zip").exists()


def test_trust_on_first_use_lock_file(server, tmp_path):
    data = _payload(seed=1)
    url = _put(server, "tofu.bin", data)
    lock = tmp_path / "checksums.lock.json"
    io_other = {"https://example.org/other.zip": {"sha256": "a" * 64, "size": 1,
                                                   "filename": "other.zip", "time": "x"}}
    lock.write_text(json.dumps(io_other))
    dest = tmp_path / "dl" / "tofu.bin"
    with pytest.warns(UserWarning, match="trust on first use"):
        fetch(url, dest, lock_file=lock, **FAST)
    record = json.loads(lock.read_text())
    assert record[url]["sha256"] == hashlib.sha256(data).hexdigest()
    assert record[url]["size"] == len(data) and record[url]["filename"] == "tofu.bin"
    assert "https://example.org/other.zip" in record  # merged, not overwritten

    # Same content again: verified against the lock, no warning, no new download needed.
    n = len(server.requests)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch(url, dest, lock_file=lock, **FAST)
    assert len(server.requests) == n

    # The publisher changes the file: a fresh download fails against the recorded checksum.
    dest.unlink()
    (server.root / "tofu.bin").write_bytes(_payload(seed=2))
    with pytest.raises(ChecksumError) as err:
        fetch(url, dest, lock_file=lock, **FAST)
    assert str(lock) in str(err.value)
    assert record[url]["sha256"] in str(err.value)
    assert not dest.exists()


def test_present_file_is_not_downloaded_again(server, tmp_path):
    data = _payload()
    url = _put(server, "a.bin", data)
    digest = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "a.bin"
    fetch(url, dest, sha256=digest, **FAST)
    fetch(url, dest, sha256=digest, **FAST)
    assert len(server.requests) == 1
    dest.write_bytes(data[:10])  # damaged copy: downloaded again
    fetch(url, dest, sha256=digest, **FAST)
    assert len(server.requests) == 2 and dest.read_bytes() == data


def test_http_errors_and_html_pages(server, tmp_path):
    with pytest.raises(DataError, match="404"):
        fetch(f"{server.base}/missing.zip", tmp_path / "m.zip", **FAST)
    assert len(server.requests) == 1  # a 404 is not retried
    url = _put(server, "login.zip", b"<html>please sign in</html>")
    server.content_type = "text/html; charset=utf-8"
    with pytest.raises(DataError, match="HTML page"):
        fetch(url, tmp_path / "login.zip", **FAST)
    assert not (tmp_path / "login.zip").exists()


def test_file_url_and_unsupported_schemes(tmp_path):
    src = tmp_path / "mirror" / "x.bin"
    src.parent.mkdir()
    data = _payload(1000)
    src.write_bytes(data)
    out = fetch(src.as_uri(), tmp_path / "x.bin", sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert out.read_bytes() == data
    for url in ("ftp://example.org/x.zip", "s3://bucket/x.zip", "x.zip"):
        with pytest.raises(DataError, match="unsupported URL scheme"):
            fetch(url, tmp_path / "y.zip", **FAST)
    with pytest.raises(DataError, match="cannot read"):
        fetch((tmp_path / "nope.bin").as_uri(), tmp_path / "z.bin", **FAST)


# --------------------------------------------------------------------------------------- archives
def _tar_with(path: Path, members: list[tarfile.TarInfo], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info in members:
            payload = b"x" * info.size if info.isfile() else None
            tf.addfile(info, _io.BytesIO(payload) if payload is not None else None)
    return path


def _file_info(name: str, size: int = 3) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _link_info(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member,why", [
    (_file_info("../evil"), "'..'"),
    (_file_info("ok/../../evil"), "'..'"),
    (_file_info("/tmp/x"), "absolute"),
    (_link_info("data/link", "../../etc"), "symlink"),
    (_link_info("link", "/etc/passwd"), "symlink"),
    (_link_info("hard", "../outside", tarfile.LNKTYPE), "hard link"),
])
def test_tar_traversal_rejected(tmp_path, member, why):
    archive = _tar_with(tmp_path / "bad.tar.gz", [_file_info("good.txt"), member])
    dest = tmp_path / "out" / "ds"
    with pytest.raises(DataError) as err:
        extract_archive(archive, dest)
    msg = str(err.value)
    assert "bad.tar.gz" in msg and member.name in msg and why in msg
    assert not dest.exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "evil").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temporary folder left


def test_tar_device_file_rejected(tmp_path):
    dev = tarfile.TarInfo("dev/null")
    dev.type = tarfile.CHRTYPE
    archive = _tar_with(tmp_path / "dev.tar", [dev], mode="w")
    with pytest.raises(DataError, match="dev/null"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../evil", "/tmp/x", "a/../../evil"])
def test_zip_traversal_rejected(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.txt", "ok")
        zf.writestr(name, "evil")
    with pytest.raises(DataError) as err:
        extract_archive(archive, tmp_path / "out")
    assert "bad.zip" in str(err.value) and name in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_zip_escaping_symlink_rejected(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("imgs/etc")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../etc")
    with pytest.raises(DataError, match="symlink"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tree() -> dict[str, bytes]:
    return {"DIV2K_train_HR/0001.png": _payload(5000, 3), "DIV2K_train_HR/0002.png": b"two",
            "README.txt": b"readme", "nested/a/b/c.bin": _payload(100, 4)}


def _check_tree(dest: Path, tree: dict[str, bytes]) -> None:
    found = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert found == tree


def test_good_zip_extracted(tmp_path):
    tree = _tree()
    archive = tmp_path / "good.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in tree.items():
            zf.writestr(name, data)
    assert is_archive(archive)
    out = extract_archive(archive, tmp_path / "raw" / "div2k")
    assert out == tmp_path / "raw" / "div2k"
    _check_tree(out, tree)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["div2k"]


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"),
                                         (".tar", "w"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_good_tar_extracted(tmp_path, suffix, mode):
    tree = _tree()
    archive = tmp_path / f"good{suffix}"
    with tarfile.open(archive, mode) as tf:
        for name, data in tree.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, _io.BytesIO(data))
        tf.addfile(_link_info("DIV2K_train_HR/same.png", "0002.png"))  # in-tree link is fine
    assert is_archive(archive)
    out = extract_archive(archive, tmp_path / "raw")
    _check_tree(out, {**tree, "DIV2K_train_HR/same.png": b"two"})
    assert os.path.islink(out / "DIV2K_train_HR" / "same.png")


def test_second_archive_merges_into_existing_dest(tmp_path):
    first, second = tmp_path / "input.zip", tmp_path / "ref.zip"
    with zipfile.ZipFile(first, "w") as zf:
        zf.writestr("input/001.png", "in")
    with zipfile.ZipFile(second, "w") as zf:
        zf.writestr("ref/001.png", "ref")
    dest = tmp_path / "raw" / "cufed"
    extract_archive(first, dest)
    extract_archive(second, dest)
    extract_archive(second, dest)  # re-extracting replaces, does not duplicate
    _check_tree(dest, {"input/001.png": b"in", "ref/001.png": b"ref"})


def test_non_archive_refused(tmp_path):
    plain = tmp_path / "imagelabels.mat"
    plain.write_bytes(_payload(2000, 5))
    assert not is_archive(plain)
    assert not is_archive(tmp_path / "missing.zip")
    with pytest.raises(DataError, match="not a zip or tar archive"):
        extract_archive(plain, tmp_path / "out")
    assert not (tmp_path / "out").exists()



def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tar", "w"), (".tar.bz2", "w:bz2"),
                                         (".tar.xz", "w:xz")])
def test_truncated_tar_is_a_named_data_error_and_extracts_nothing(tmp_path, suffix, mode):
    archive = tmp_path / f"data{suffix}"
    with tarfile.open(archive, mode) as tf:
        for k in range(3):
            data = _payload(200_000, k)
            info = tarfile.TarInfo(f"HR/{k:04d}.png")
            info.size = len(data)
            tf.addfile(info, _io.BytesIO(data))
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match=r"archive .*data.* is truncated or corrupt.*download it again"):
        extract_archive(archive, tmp_path / "raw" / "set")
    assert _leftovers(tmp_path / "raw") == []  # no half-extracted folder, no temporary


def test_zip_with_a_bad_crc_names_the_member(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("HR/0001.png", b"A" * 5000)
        zf.writestr("HR/0002.png", b"B" * 5000)
    raw = bytearray(archive.read_bytes())
    at = raw.index(b"B" * 5000)
    raw[at + 100] ^= 0xFF  # flip a byte of the second member's data: its CRC no longer matches
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"truncated or corrupt \(member 'HR/0002.png'\)"):
        extract_archive(archive, tmp_path / "raw" / "set")
    assert _leftovers(tmp_path / "raw") == []


def test_a_plain_file_given_as_an_archive_source_is_refused_at_once(tmp_path):
    from sfsr.data.raw import assemble_raw
    plain = tmp_path / "images.zip"  # named like an archive, holds a PNG
    plain.write_bytes(b"\x89PNG\r\n\x1a\n" + _payload(1000, 1))
    with pytest.raises(DataError, match=r"images.zip is not an archive .*extract: false"):
        assemble_raw([plain], tmp_path / "raw" / "set")
    assert _leftovers(tmp_path / "raw") == []
    # a label file the catalogue marks extract: false is kept beside the images
    labels = tmp_path / "imagelabels.mat"
    labels.write_bytes(_payload(100, 2))
    out = assemble_raw([labels], tmp_path / "raw" / "labels", extract={"imagelabels.mat": False})
    assert (out / "imagelabels.mat").read_bytes() == labels.read_bytes()


def test_a_truncated_local_archive_is_called_corrupt_not_plain(tmp_path):
    from sfsr.data.raw import assemble_raw
    archive = tmp_path / "set.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tf:
        data = _payload(300_000, 3)
        info = tarfile.TarInfo("HR/0001.png")
        info.size = len(data)
        tf.addfile(info, _io.BytesIO(data))
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated or corrupt: it starts like a bzip2 file"):
        assemble_raw([archive], tmp_path / "raw" / "set")
    assert _leftovers(tmp_path / "raw") == []
