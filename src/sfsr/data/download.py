"""Downloading and unpacking dataset files: checksummed, resumable, safe to extract.

* :func:`fetch` downloads an ``http``/``https``/``file`` URL through a ``.part`` file (resumed with
  an HTTP ``Range`` request when the server allows it, retried with backoff), verifies the SHA-256
  or MD5 given in the config, or, when the config gives none, the checksum recorded in a JSON lock
  file on the first download (trust on first use), and only then renames it to ``dest``.
* :func:`extract_archive` unpacks zip / tar(.gz/.bz2/.xz) archives into a temporary sibling folder,
  refusing members that would land outside the destination (absolute paths, ``..``, links that
  escape, device files), and moves the result into place when complete.

Lock file format (JSON, one entry per URL)::

    {"https://host/file.zip": {"sha256": "...", "size": 123, "filename": "file.zip",
                               "time": "2026-01-01T00:00:00+00:00"}}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import lzma
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from tqdm import tqdm

from sfsr import io
from sfsr.errors import ChecksumError, ConfigError, DataError

logger = logging.getLogger(__name__)

_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20  # 1 MiB
_USER_AGENT = "sfsr-downloader/0.1 (+https://github.com/; research dataset download)"
_HEX = {"sha256": re.compile(r"^[0-9a-fA-F]{64}$"), "md5": re.compile(r"^[0-9a-fA-F]{32}$")}
# Failures worth another attempt: network trouble, truncated bodies, server-side errors.
_TRANSIENT = (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException,
              urllib.error.URLError, OSError)


class _Incomplete(Exception):
    """The body ended before the announced length (internal; turned into a retry or DataError)."""


# --------------------------------------------------------------------------------------- checksums
def _digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    """The checksums asked for, validated and lower-cased (``{algorithm: hexdigest}``)."""
    out = {}
    for name, value in (("sha256", sha256), ("md5", md5)):
        if value is None:
            continue
        if not isinstance(value, str) or not _HEX[name].match(value):
            raise ConfigError(f"{name} {value!r} is not a hex {name} digest "
                              f"({64 if name == 'sha256' else 32} hex digits); fix it in config.yaml")
        out[name] = value.lower()
    return out


def _mismatches(path: Path, expected: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``{algorithm: (expected, actual)}`` for every expected digest ``path`` does not match."""
    bad = {}
    for name, want in expected.items():
        got = _digest(path, name)
        if got != want:
            bad[name] = (want, got)
    return bad


# --------------------------------------------------------------------------------------- lock file
@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Serialise read-merge-write of ``lock_file`` between processes (POSIX advisory lock)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock, writes stay atomic
        yield
        return
    with open(lock_file.with_name(lock_file.name + ".flock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_lock(lock_file: Path) -> dict:
    if not lock_file.is_file():
        return {}
    try:
        data = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"checksum lock file {lock_file} is not valid JSON ({exc}); repair it or "
                        "delete it (its checksums are then recorded again on the next download)"
                        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"checksum lock file {lock_file} must hold a JSON object "
                        "{url: {sha256, size, filename, time}}; repair or delete it")
    return data


def _record_lock(lock_file: Path, url: str, path: Path, sha256: str) -> None:
    with _locked(lock_file):
        data = _read_lock(lock_file)
        data[url] = {"sha256": sha256, "size": path.stat().st_size, "filename": path.name,
                     "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        io.write_json(lock_file, data)


# --------------------------------------------------------------------------------------- download
def _check_url(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise DataError(f"cannot download {url!r}: unsupported URL scheme {scheme or '(none)'!r}; "
                        "use an http(s):// or file:// URL, or give a local copy with "
                        "'source: local' and 'path: ...'")
    return scheme


def _total_from(resp, have: int) -> int | None:
    """Full size of the remote file from Content-Range (206) or Content-Length."""
    content_range = resp.headers.get("Content-Range") or ""
    match = re.match(r"bytes\s+\d+-\d+/(\d+)", content_range)
    if match:
        return int(match.group(1))
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _attempt(url: str, part: Path, scheme: str, *, timeout: float, progress: bool,
             name: str) -> tuple[int, int | None]:
    """One transfer into ``part`` (resumed when possible). Returns (bytes on disk, total size)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have and scheme != "file":
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        status = getattr(resp, "status", None)
        if status == 206:
            start = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range") or "")
            if not start or int(start.group(1)) != have:
                raise DataError(f"{url}: server answered the range request from byte {have} with "
                                f"Content-Range {resp.headers.get('Content-Range')!r}; delete "
                                f"{part} and re-run")
            mode = "ab"
        else:  # 200 (server ignored Range) or file:// -> start over
            if have:
                logger.info("%s: server does not resume (status %s); restarting the download",
                            url, status)
            have, mode = 0, "wb"
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if scheme != "file" and ctype.startswith("text/html") and \
                not name.lower().endswith((".html", ".htm")):
            raise DataError(f"{url} returned an HTML page (Content-Type {ctype!r}) instead of the "
                            f"file {name}: the site probably wants a login, a licence click or a "
                            "confirmation. Download it in a browser and point the dataset at it "
                            "with 'source: local' and 'path: ...'")
        total = _total_from(resp, have)
        with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=name, disable=not progress,
                                          leave=False) as bar:
            try:
                while chunk := resp.read(_CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
            finally:
                fh.flush()
                os.fsync(fh.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Incomplete(f"{size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise _Incomplete(f"{size} bytes on disk but the file has {total}; partial file discarded")
    return size, total


def _download(url: str, part: Path, scheme: str, *, timeout: float, retries: int,
              backoff: float, progress: bool, name: str) -> None:
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            logger.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", url, attempt,
                           retries + 1, last, delay)
            time.sleep(delay)
        try:
            _attempt(url, part, scheme, timeout=timeout, progress=progress, name=name)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # range not satisfiable: our partial file is stale
                part.unlink(missing_ok=True)
                last = "HTTP 416 for the resume request; partial file discarded"
            elif exc.code >= 500 or exc.code in (408, 429):
                last = f"HTTP {exc.code} {exc.reason}"
            else:
                raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; check "
                                "the URL in config.yaml (the publisher may have moved the file)"
                                ) from exc
        except _Incomplete as exc:
            last = f"incomplete transfer, {exc}"
        except DataError:
            raise
        except _TRANSIENT as exc:
            if scheme == "file" and isinstance(exc, urllib.error.URLError):
                raise DataError(f"cannot read {url}: {exc.reason}") from exc
            last = f"{type(exc).__name__}: {exc}"
    kept = (f"{part.stat().st_size} bytes kept in {part}; re-run to resume"
            if part.exists() and part.stat().st_size else "re-run to try again")
    raise DataError(f"download of {url} failed after {retries + 1} attempts: {last} ({kept}, or "
                    "download the file yourself and use 'source: local')")


def fetch(url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None,
          lock_file: Path | None = None, progress: bool = True, timeout: float = 60,
          retries: int = 3, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    The expected checksum is ``sha256``/``md5`` (both checked when both given), else the SHA-256
    that ``lock_file`` records for ``url``; with neither, the SHA-256 of this first download is
    recorded in ``lock_file`` (trust on first use) and a warning says so. A complete ``dest``
    that matches the expected checksum is not downloaded again. The transfer goes through
    ``dest.part``, is resumed with an HTTP Range request after an interruption (restarted when the
    server ignores Range) and retried ``retries`` times with exponential ``backoff`` seconds.
    """
    dest = Path(dest)
    scheme = _check_url(url)
    expected = _expected(sha256, md5)
    source = "config.yaml"
    lock_file = Path(lock_file) if lock_file is not None else None
    if not expected and lock_file is not None:
        entry = _read_lock(lock_file).get(url)
        if entry is not None:
            if not isinstance(entry, dict) or not _HEX["sha256"].match(str(entry.get("sha256"))):
                raise DataError(f"checksum lock file {lock_file}: entry for {url} has no valid "
                                "sha256; delete that entry to record it again")
            expected = {"sha256": entry["sha256"].lower()}
            source = f"the lock file {lock_file} (recorded {entry.get('time', '?')})"

    if dest.is_file() and expected:
        if not _mismatches(dest, expected):
            logger.info("%s already present and verified; not downloading %s", dest, url)
            return dest
        logger.warning("%s exists but does not match its checksum; downloading %s again", dest, url)
        dest.unlink()

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    _download(url, part, scheme, timeout=timeout, retries=retries, backoff=backoff,
              progress=progress, name=dest.name)

    if expected:
        bad = _mismatches(part, expected)
        if bad:
            part.unlink(missing_ok=True)
            detail = "; ".join(f"{k} expected {w}, got {g}" for k, (w, g) in bad.items())
            hint = ("edit or delete the entry for this URL in the lock file if the publisher "
                    "really changed the file" if lock_file is not None and source != "config.yaml"
                    else "if the publisher changed the file, update the checksum in config.yaml")
            raise ChecksumError(f"checksum mismatch for {url} (expected value from {source}): "
                                f"{detail}. The bad download was deleted. Re-run to download it "
                                f"again; {hint}")
        os.replace(part, dest)
        return dest

    actual = _digest(part, "sha256")
    os.replace(part, dest)
    if lock_file is not None:
        _record_lock(lock_file, url, dest, actual)
        message = (f"no checksum configured for {url}: recorded sha256 {actual} of this first "
                   f"download in {lock_file} (trust on first use); later downloads are verified "
                   "against it. Put it in config.yaml (sha256: ...) to pin it.")
    else:
        message = (f"no checksum configured for {url} and no lock file given: the download "
                   f"(sha256 {actual}) was not verified")
    logger.warning(message)
    warnings.warn(message, stacklevel=2)
    return dest


# --------------------------------------------------------------------------------------- archives
def is_archive(path: str | os.PathLike) -> bool:
    """True for a zip or a (possibly gz/bz2/xz-compressed) tar file, judged by content."""
    path = Path(path)
    if not path.is_file():
        return False
    if zipfile.is_zipfile(path):
        return True
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


_MAGIC = ((b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
          (b"\xfd7zXZ\x00", "xz"))


def archive_format(path: Path) -> str | None:
    """The archive/compression format ``path`` starts like (zip, gzip, bzip2, xz), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _unsafe_name(name: str) -> str | None:
    """Why a member name would land outside the destination, or None if it is safe."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' path component"
    return None


def _escapes(member_name: str, target: str, *, relative_to_member: bool) -> bool:
    """Whether a link named ``member_name`` pointing at ``target`` leaves the destination."""
    target = target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return True
    base = PurePosixPath(member_name.replace("\\", "/")).parent if relative_to_member else \
        PurePosixPath(".")
    resolved = os.path.normpath(str(base / target))
    return resolved == ".." or resolved.startswith("../") or resolved.startswith("/")


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"refusing to extract {archive}: member {member!r} ({why}) would be written "
                     "outside the destination folder. The archive is unsafe or corrupt; "
                     "download it again from the official source")


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        why = _unsafe_name(info.filename)
        if why:
            raise _refuse(archive, info.filename, why)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            if _escapes(info.filename, target, relative_to_member=True):
                raise _refuse(archive, info.filename, f"symlink to {target!r}")
        elif stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise _refuse(archive, info.filename, "special file")


def _check_tar(archive: Path, tf: tarfile.TarFile) -> None:
    for member in tf.getmembers():
        why = _unsafe_name(member.name)
        if why:
            raise _refuse(archive, member.name, why)
        if member.issym() and _escapes(member.name, member.linkname, relative_to_member=True):
            raise _refuse(archive, member.name, f"symlink to {member.linkname!r}")
        if member.islnk() and _escapes(member.name, member.linkname, relative_to_member=False):
            raise _refuse(archive, member.name, f"hard link to {member.linkname!r}")
        if member.isdev():
            raise _refuse(archive, member.name, "device file or FIFO")


#: what reading a damaged archive raises (bad zip CRC or header, truncated or corrupt gzip/bzip2/xz
#: stream, short read); turned into one DataError naming the archive and the member
_CORRUPT = (zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError, OSError,
            ValueError)


def _corrupt_archive(archive: Path, member: str | None, exc: BaseException) -> DataError:
    where = f" (member {member!r})" if member else ""
    if isinstance(exc, OSError) and exc.errno is not None:  # the disk, not the archive
        return DataError(f"cannot extract {archive}{where}: {exc.strerror} ({exc.filename or 'target'}). "
                         "Free disk space or fix the permissions of the data folder, then re-run")
    return DataError(f"archive {archive} is truncated or corrupt{where}: {type(exc).__name__}: {exc}. "
                     "Nothing was extracted; delete the file and download it again (or fetch a fresh "
                     "copy of your local archive)")


def _extract_into(archive: Path, tmp: Path) -> None:
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                _check_zip(archive, zf)
                member = None
                for info in zf.infolist():  # one member at a time: a bad CRC names its member
                    member = info.filename
                    zf.extract(info, tmp)
        except DataError:
            raise
        except _CORRUPT as exc:
            raise _corrupt_archive(archive, member, exc) from exc
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive} is not a zip or tar archive ({exc}); it cannot be extracted. "
                        "If it is a plain file, set 'extract: false' for it in config.yaml") from exc
    with tf:
        try:
            _check_tar(archive, tf)  # reads every header: a truncated stream fails here
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's safe filter too
                tf.extractall(tmp, filter="data")
            else:  # pragma: no cover - older 3.11: members were checked above
                tf.extractall(tmp)
        except getattr(tarfile, "FilterError", ()) as exc:
            name = getattr(getattr(exc, "tarinfo", None), "name", "?")
            raise _refuse(archive, name, str(exc)) from exc
        except DataError:
            raise
        except (tarfile.TarError, *_CORRUPT) as exc:
            raise _corrupt_archive(archive, None, exc) from exc


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a zip / tar / tar.gz / tgz / tar.bz2 / tar.xz ``archive`` into ``dest``; return it.

    Members with absolute paths or ``..`` components, links that point outside ``dest`` and
    device files are refused with a :class:`DataError` naming the archive and member. Everything
    is extracted into a temporary sibling of ``dest`` first: when ``dest`` does not exist the
    finished folder is renamed to ``dest`` (never half-extracted); when it exists (several
    archives of one dataset) each finished top-level entry is moved into it, replacing an entry
    of the same name.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"cannot extract {archive}: no such file")
    if not is_archive(archive):
        kind = archive_format(archive)
        if kind:  # starts like an archive but cannot be opened: damaged, not a plain file
            raise DataError(f"archive {archive} is truncated or corrupt: it starts like a {kind} "
                            "file but cannot be read. Nothing was extracted; delete the file and "
                            "download it again (or fetch a fresh copy of your local archive)")
        raise DataError(f"{archive} is not a zip or tar archive; it cannot be extracted. If it is "
                        "a plain file, set 'extract: false' for it in config.yaml")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = io.make_temp_dir(dest, ".extract")
    try:
        _extract_into(archive, tmp)
        if not dest.exists():
            os.replace(tmp, dest)
            return dest
        if not dest.is_dir():
            raise DataError(f"cannot extract {archive} into {dest}: it exists and is not a folder")
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
