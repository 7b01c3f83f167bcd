"""Random access to `.sarz` files that are not on a local disk: `http(s)://` URLs through HTTP range requests
(standard library only), other URLs (`s3://`, `gs://`, …) through fsspec when it is installed.

`reconstruct URL --window …` and `info URL` read the header, the chunk index and the chunks the window needs, not
the file: `HttpRangeFile` is a read-only, seekable file object whose every read is one `Range` request (plus a
small read-ahead that grows while reads are sequential, and a cache of what was fetched), so opening a file costs
two or three requests and a window costs about its share of the bytes.

Every failure — host unreachable, HTTP 404/403, timeouts, a server that ignores `Range`, a file changed or cut
short while reading — is the project's input error naming the URL (exit 2, one line). Connection errors, timeouts,
HTTP 5xx/429 and transfers cut short are retried with exponential backoff first.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from typing import Optional

from sar_ae_core import __version__
from sar_ae_core.errors import SarInputError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)
_UNSATISFIED = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.I)

#: defaults (a request's timeout in seconds, retries after the first attempt, first backoff in seconds)
TIMEOUT_S = float(os.environ.get("SARAE_HTTP_TIMEOUT", "30"))
RETRIES = 3
BACKOFF_S = 0.25
#: every missing read fetches at least this much (the header, the footer and a small index come in one request
#: each); sequential reads double it up to MAX_READAHEAD
MIN_REQUEST = 1024
MAX_READAHEAD = 1 << 20
CACHE_BYTES = 8 << 20

#: bytes and requests of every remote file opened by this process (for the command line's summary)
TOTALS = {"requests": 0, "bytes": 0}


def is_url(path) -> bool:
    """True for 'scheme://…' strings (http, https, s3, …), False for local paths."""
    return isinstance(path, str) and bool(_URL.match(path))


def local_input(path) -> Optional[str]:
    """The local file behind an input, for the checks that no output replaces one of its inputs: the path itself,
    a `file://` URL's path, and None for a remote URL (no local file to protect)."""
    path = os.fspath(path)
    if not is_url(path):
        return path
    if path.lower().startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(path).path)
    return None


class _Retry(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, a transfer cut short)."""


class HttpRangeFile(io.RawIOBase):
    """A remote file read through HTTP range requests: read-only, seekable, with a known size.

    The size comes from the first request (`Range: bytes=0-…`, whose `Content-Range` gives the total), which also
    brings the file's first bytes (the `.sarz` header). A server answering 200 with the whole body instead of 206
    ignores `Range`: that is refused with a one-line error rather than downloading a whole file unasked.
    `requests` and `bytes_received` count what this file cost."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT_S, retries: int = RETRIES, backoff: float = BACKOFF_S,
                 min_request: int = MIN_REQUEST, max_readahead: int = MAX_READAHEAD, cache_bytes: int = CACHE_BYTES):
        super().__init__()
        self.url = url
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.min_request, self.max_readahead, self.cache_bytes = int(min_request), int(max_readahead), int(cache_bytes)
        self.requests = 0
        self.bytes_received = 0
        self._pos = 0
        self._size: Optional[int] = None
        self._validator: Optional[tuple[str, str]] = None  # (ETag, Last-Modified) of the first answer
        self._spans: "OrderedDict[int, bytes]" = OrderedDict()  # start → bytes, least recently used first
        self._cached = 0
        self._last_end = -1
        self._readahead = self.min_request
        data = self._fetch(0, self.min_request)  # size + the first bytes in one request
        if self._size == 0:
            raise SarInputError(url, "is empty (0 bytes)")
        self._store(0, data)

    # -- io.RawIOBase ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self._size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        end = self.size if n is None or n < 0 else min(self.size, self._pos + int(n))
        out = bytearray()
        pos = self._pos
        while pos < end:
            hit = self._lookup(pos)
            if hit is not None:
                part = hit[:end - pos]
                out += part
                pos += len(part)
                continue
            start, stop = self._plan(pos, end)
            data = self._fetch(start, stop)
            self._store(start, data)
        self._pos = pos
        return bytes(out)

    def prefetch(self, start: int, stop: int) -> None:
        """Fetch the uncached parts of bytes [start, stop) now, exactly (no read-ahead)."""
        start, stop = max(0, int(start)), min(self.size, int(stop))
        pos = start
        while pos < stop:
            hit = self._lookup(pos)
            if hit is not None:
                pos += len(hit)
                continue
            nxt = self._next_cached(pos)
            end = stop if nxt is None else min(stop, nxt)
            self._store(pos, self._fetch(pos, end))
            pos = end
        self._last_end = -1  # what follows is not a sequential stream

    def close(self) -> None:
        self._spans.clear()
        self._cached = 0
        super().close()

    # -- cache ------------------------------------------------------------------------------------
    def _lookup(self, pos: int) -> Optional[memoryview]:
        for start, data in self._spans.items():
            if start <= pos < start + len(data):
                self._spans.move_to_end(start)
                return memoryview(data)[pos - start:]
        return None

    def _next_cached(self, pos: int) -> Optional[int]:
        starts = [s for s in self._spans if s > pos]
        return min(starts) if starts else None

    def _store(self, start: int, data: bytes) -> None:
        if not data:
            return
        old = self._spans.pop(start, None)
        if old is not None:
            self._cached -= len(old)
        self._spans[start] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes and len(self._spans) > 1:
            _, dropped = self._spans.popitem(last=False)
            self._cached -= len(dropped)

    def _plan(self, pos: int, end: int) -> tuple[int, int]:
        """The byte range [start, stop) to fetch for a read of [pos, end) that starts at an uncached byte."""
        sequential = pos == self._last_end
        self._readahead = min(self._readahead * 2, self.max_readahead) if sequential else self.min_request
        start, stop = pos, min(self.size, max(end, pos + self._readahead))
        if stop - start < self.min_request and stop == self.size:  # near the end: the footer and the index
            start = max(0, self.size - self.min_request)
            prev = [s + len(d) for s, d in self._spans.items() if s + len(d) <= pos]
            start = max([start] + [p for p in prev if p > start])  # do not fetch cached bytes again
        nxt = self._next_cached(pos)
        if nxt is not None and nxt < stop:  # fetch the gap only: what follows is cached
            stop = nxt
        return start, stop

    # -- HTTP -------------------------------------------------------------------------------------
    def _fetch(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) in one range request, retried on transient failures."""
        last = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                data = self._request(start, stop)
            except _Retry as exc:
                last = str(exc)
                continue
            self._last_end = start + len(data)
            return data
        raise SarInputError(self.url, f"cannot be read: {last} (gave up after {self.retries + 1} attempts)")

    def _request(self, start: int, stop: int) -> bytes:
        req = urllib.request.Request(self.url, headers={
            "Range": f"bytes={start}-{max(stop, start + 1) - 1}", "Accept-Encoding": "identity",
            "User-Agent": f"sar_ae_core/{__version__}"})
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416:  # the range starts past the end: the answer says how long the file is
                m = _UNSATISFIED.match(exc.headers.get("Content-Range", "") or "")
                if m and self._size is None:
                    self._size = int(m.group(1))
                    if self._size == 0:
                        return b""
                raise SarInputError(self.url, f"the server refused the byte range {start}-{stop - 1} (HTTP 416): "
                                              "the file is shorter than its index says (truncated or changed)")
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
            what = {404: "not found on the server", 401: "needs authentication", 403: "access denied",
                    410: "gone from the server"}.get(exc.code, "refused by the server")
            raise SarInputError(self.url, f"{what} (HTTP {exc.code} {exc.reason})") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise _Retry(f"no answer within {self.timeout:g} s") from None
            if isinstance(reason, socket.gaierror):
                raise SarInputError(self.url, f"host not found ({reason.strerror or reason})") from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise _Retry(f"cannot connect ({text})") from None
        except (socket.timeout, TimeoutError):
            raise _Retry(f"no answer within {self.timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retry(f"connection failed ({type(exc).__name__}: {exc})") from None
        with resp:
            if resp.status == 200:
                raise SarInputError(self.url, "the server ignores HTTP range requests (it answered 200 with the "
                                              "whole file): download the file first, or serve it from a server "
                                              "that supports Range")
            if resp.status != 206:
                raise SarInputError(self.url, f"unexpected answer HTTP {resp.status} to a range request")
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "") or "")
            if not m or m.group(3) == "*":
                raise SarInputError(self.url, "the server's range answer has no usable Content-Range header")
            first, last, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
            validator = (resp.headers.get("ETag", ""), resp.headers.get("Last-Modified", ""))
            if self._size is None:
                self._size, self._validator = total, validator
            elif total != self._size or (any(self._validator) and validator != self._validator):
                raise SarInputError(self.url, "the file changed on the server while it was being read")
            if first != start or last < first or last >= total:
                raise SarInputError(self.url, f"the server sent bytes {first}-{last} for the range "
                                              f"{start}-{stop - 1}")
            want = last - first + 1
            try:
                data = resp.read(want)
            except (socket.timeout, TimeoutError):
                raise _Retry(f"no answer within {self.timeout:g} s") from None
            except (http.client.IncompleteRead, ConnectionError, OSError, http.client.HTTPException) as exc:
                raise _Retry(f"the transfer was cut short ({type(exc).__name__})") from None
            if len(data) != want:
                raise _Retry(f"the transfer was cut short ({len(data)} of {want} bytes)")
        self.requests += 1
        self.bytes_received += len(data)
        TOTALS["requests"] += 1
        TOTALS["bytes"] += len(data)
        return data


class _FsspecFile(io.RawIOBase):
    """An fsspec file whose errors become the project's input error naming the URL."""

    def __init__(self, url: str, fh, size: int):
        super().__init__()
        self.url, self._fh, self.size = url, fh, size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def read(self, n: int = -1) -> bytes:
        try:
            return self._fh.read(n)
        except Exception as exc:  # noqa: BLE001 - every backend raises its own types
            raise SarInputError(self.url, f"cannot be read ({type(exc).__name__}: {str(exc)[:160]})") from None

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


def open_url(url: str):
    """(read-only seekable file object, size in bytes) for a URL; errors name it."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        f = HttpRangeFile(url)
        return f, f.size
    try:
        import fsspec
    except ImportError:
        raise SarInputError(url, f"reading '{scheme}://' URLs needs fsspec (pip install fsspec and its "
                                 f"'{scheme}' backend); http(s) URLs work without it") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
        size = int(fs.size(path))
        fh = fs.open(path, "rb")
    except FileNotFoundError:
        raise SarInputError(url, "not found") from None
    except ImportError as exc:
        raise SarInputError(url, f"cannot be opened: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:  # noqa: BLE001 - every backend raises its own types
        raise SarInputError(url, f"cannot be opened ({type(exc).__name__}: {str(exc)[:160]})") from None
    return _FsspecFile(url, fh, size), size


def open_container(path):
    """A `ContainerReader` on a local `.sarz` path or a URL (only the parts read are transferred)."""
    from sar_ae_core.coding.container import ContainerReader

    path = os.fspath(path)
    if not is_url(path):
        return ContainerReader.open(path)
    fh, size = open_url(path)
    return ContainerReader.from_file(fh, size, path)
