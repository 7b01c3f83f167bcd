"""`.sarz` files on a web server: `info URL` and `reconstruct URL --window` read only the header, the index and the
chunks a window needs through HTTP range requests, decode bit for bit like the local file, and every failure
(404, a server that ignores Range, a truncated file, a refused port, a timeout) is one line naming the URL.

The server is a real `http.server` on 127.0.0.1 in a thread, with Range support and byte counts."""

import json
import os
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import rasterio

from sar_ae_core.cli import main
from sar_ae_core.codec import compress_raster, reconstruct_raster, sarz_info
from sar_ae_core.errors import SarInputError
from sar_ae_core.io.remote import HttpRangeFile, is_url


class RangeServer(ThreadingHTTPServer):
    """Serves in-memory files with HTTP/1.1 Range support; counts requests and body bytes sent.

    Switches for failures: `ignore_range` (answers 200 with the whole body), `fail_next` (that many 503 answers),
    `cut_next` (that many answers promise the body and send half of it), `stall_s` (waits before answering)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.ignore_range = False
        self.fail_next = 0
        self.cut_next = 0
        self.stall_s = 0.0
        self.requests = 0
        self.bytes_served = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client hung up: fine
            super().handle_error(request, client_address)

    def reset_counts(self) -> None:
        with self.lock:
            self.requests = self.bytes_served = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict, cut: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", "Mon, 01 Dec 2025 00:00:00 GMT")
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = body[: len(body) // 2] if cut else body
        with self.server.lock:  # counted before the client can have it (no race with the test's checks)
            self.server.bytes_served += len(sent)
        self.wfile.write(sent)
        if cut:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests += 1
            fail = srv.fail_next > 0
            srv.fail_next -= fail
            cut = srv.cut_next > 0
            srv.cut_next -= cut
        if srv.stall_s:
            time.sleep(srv.stall_s)
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            return self._send(404, b"not found", {"Content-Type": "text/plain"})
        if fail:
            return self._send(503, b"busy", {"Content-Type": "text/plain"})
        rng = self.headers.get("Range")
        if srv.ignore_range or not rng:
            return self._send(200, data, {"Content-Type": "application/octet-stream"}, cut)
        first, _, last = rng.split("=", 1)[1].partition("-")
        size = len(data)
        if first == "":  # suffix range: the last N bytes
            first, last = max(0, size - int(last)), size - 1
        else:
            first, last = int(first), min(int(last) if last else size - 1, size - 1)
        if first >= size:
            return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
        return self._send(206, data[first:last + 1], {"Content-Range": f"bytes {first}-{last}/{size}",
                                                      "Content-Type": "application/octet-stream"}, cut)

    do_HEAD = do_GET


@pytest.fixture(scope="module")
def server():
    srv = RangeServer()
    srv.thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def spain_sarz(tmp_path_factory, spain_db, default_bundle):
    """The real 512² VV+VH chip compressed with the bundled default model (2×2 tiles of 256 px)."""
    path = tmp_path_factory.mktemp("remote") / "spain.sarz"
    compress_raster(spain_db, path, model=default_bundle, device="cpu")
    return path


@pytest.fixture
def served(server, spain_sarz):
    server.files = {"spain.sarz": spain_sarz.read_bytes()}
    server.ignore_range, server.fail_next, server.cut_next, server.stall_s = False, 0, 0, 0.0
    server.reset_counts()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_is_url_tells_urls_from_paths():
    assert is_url("http://h/x.sarz") and is_url("https://h/x.sarz") and is_url("s3://b/x.sarz")
    assert not is_url("/data/x.sarz") and not is_url("x.sarz") and not is_url("C:\\x.sarz") and not is_url("")


def test_range_file_reads_exactly_the_local_bytes(served, spain_sarz):
    local = spain_sarz.read_bytes()
    f = HttpRangeFile(served.url("spain.sarz"))
    assert f.size == len(local) and f.requests == 1
    rng = random.Random(7)
    for _ in range(300):
        pos, n = rng.randrange(len(local)), rng.choice([1, 7, 100, 1000, 5000, 20000])
        f.seek(pos)
        assert f.read(n) == local[pos:pos + n]
        assert f.tell() == min(pos + n, len(local))
    f.seek(-24, os.SEEK_END)
    assert f.read() == local[-24:]
    f.seek(0)
    assert f.read() == local  # the whole file, in a few requests
    # every byte was fetched from the server at most a few times over: the cache works
    assert f.bytes_received == served.bytes_served < 4 * len(local)
    assert f.requests == served.requests
    f.close()


def test_info_and_window_over_http_equal_the_local_file(tmp_path, served, spain_sarz, capsys):
    url = served.url("spain.sarz")
    assert main(["info", url, "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    local = sarz_info(spain_sarz)
    assert remote.pop("path") == url
    local.pop("path")
    assert remote == json.loads(json.dumps(local, default=str))
    assert served.requests <= 3  # header (with the size), footer + index: no chunk read
    assert served.bytes_served < 3 * 4096 + 64

    window = ["300", "10", "120", "200"]  # touches tiles (0, 1) and (0, 0)'s halo
    served.reset_counts()
    assert main(["reconstruct", url, str(tmp_path / "remote.tif"), "--window", *window]) == 0
    assert "range request(s)" in capsys.readouterr().out
    reconstruct_raster(spain_sarz, tmp_path / "local.tif", window=[int(v) for v in window])
    with rasterio.open(tmp_path / "remote.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        assert a.read().tobytes() == b.read().tobytes()
        assert a.transform == b.transform and a.crs == b.crs and a.tags()["SARAE_SOURCE"] == b.tags()["SARAE_SOURCE"]
    # the window's decode windows need the latents of all 4 tiles (halos), the masks of 2: no byte twice
    assert served.bytes_served < spain_sarz.stat().st_size and served.requests <= 12


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize("case, expect", [
    ("404", "not found on the server (HTTP 404"),
    ("ignores range", "the server ignores HTTP range requests"),
    ("truncated", "truncated"),
    ("refused port", "Connection refused"),
])
def test_remote_failures_are_one_line_naming_the_url(tmp_path, served, spain_sarz, capsys, case, expect):
    data = spain_sarz.read_bytes()
    url = served.url("spain.sarz")
    if case == "404":
        url = served.url("missing.sarz")
    elif case == "ignores range":
        served.ignore_range = True
    elif case == "truncated":
        served.files["spain.sarz"] = data[: len(data) * 2 // 3]
    elif case == "refused port":
        url = f"http://127.0.0.1:{_free_port()}/spain.sarz"
    out = tmp_path / "out.tif"
    assert main(["reconstruct", url, str(out), "--window", "0", "0", "64", "64"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {url}: ") and expect in err, err
    assert main(["info", url]) == 2
    assert _one_line_error(capsys).startswith(f"error: {url}: ")
    assert os.listdir(tmp_path) == []  # nothing written, no temporary file left
    if case in ("404", "ignores range", "truncated"):  # answers, not transient failures: no retries
        assert served.requests == (2 if case != "truncated" else 4)  # truncated: header, then footer + index


def test_a_file_damaged_on_the_server_is_reported(tmp_path, served, spain_sarz, capsys):
    data = bytearray(spain_sarz.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit in a chunk
    served.files["spain.sarz"] = bytes(data)
    assert main(["reconstruct", served.url("spain.sarz"), str(tmp_path / "x.tif")]) == 2
    assert "checksum mismatch (file is damaged)" in _one_line_error(capsys)
    assert not (tmp_path / "x.tif").exists()


def test_transient_failures_are_retried(tmp_path, served, spain_sarz):
    served.fail_next, served.cut_next = 2, 0
    f = HttpRangeFile(served.url("spain.sarz"), backoff=0.01)
    assert f.size == spain_sarz.stat().st_size and served.requests == 3  # 503, 503, then the answer
    served.cut_next = 1  # the next answer stops halfway: retried
    f.seek(20000)
    assert f.read(3000) == spain_sarz.read_bytes()[20000:23000]
    assert served.requests == 5
    served.fail_next = 10  # more failures than retries: one error naming the URL
    f.seek(12000)
    with pytest.raises(SarInputError) as e:
        f.read(100)
    assert e.value.path == served.url("spain.sarz") and "HTTP 503" in e.value.problem and "4 attempts" in e.value.problem


def test_a_server_that_does_not_answer_times_out(served):
    served.stall_s = 1.0
    t0 = time.perf_counter()
    with pytest.raises(SarInputError) as e:
        HttpRangeFile(served.url("spain.sarz"), timeout=0.2, retries=1, backoff=0.01)
    assert "no answer within 0.2 s" in e.value.problem and time.perf_counter() - t0 < 5


def test_a_file_replaced_on_the_server_while_reading_is_refused(served, spain_sarz):
    f = HttpRangeFile(served.url("spain.sarz"))
    served.files["spain.sarz"] = spain_sarz.read_bytes() + b"more"
    f.seek(30000)
    with pytest.raises(SarInputError, match="changed on the server"):
        f.read(10)


def test_other_urls_go_through_fsspec_and_a_file_url_is_still_protected(tmp_path, spain_sarz, capsys):
    pytest.importorskip("fsspec")
    url = spain_sarz.as_uri()  # file:///…
    assert main(["reconstruct", url, str(tmp_path / "a.tif"), "--window", "100", "100", "64", "64"]) == 0
    reconstruct_raster(spain_sarz, tmp_path / "b.tif", window=[100, 100, 64, 64])
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert a.read().tobytes() == b.read().tobytes()
    before = spain_sarz.read_bytes()
    capsys.readouterr()
    assert main(["reconstruct", url, str(spain_sarz), "--overwrite"]) == 2  # the URL's file is the output
    assert "is an input of this operation" in _one_line_error(capsys)
    assert spain_sarz.read_bytes() == before
    assert main(["info", (tmp_path / "none.sarz").as_uri()]) == 2
    assert _one_line_error(capsys).endswith("none.sarz: not found")


@pytest.mark.slow
def test_a_window_of_a_4096px_file_reads_under_a_tenth_of_it(tmp_path, server, spain_db, default_bundle, capsys):
    """512² out of a 4096² `.sarz` (the real VV chip tiled 8×8; default 256 px tiles): the same pixels as a local
    window decode, from less than 10 % of the file's bytes, wherever the window falls (aligned with the tiles, or
    across the most tiles and decode units)."""
    from sar_ae_core.io.raster import mosaic_vrt

    vrt = mosaic_vrt(spain_db, tmp_path / "big.vrt", 4096, 4096, band=1)
    sarz = tmp_path / "big.sarz"
    compress_raster(vrt, sarz, model=default_bundle, device="cpu")
    size = sarz.stat().st_size
    server.files = {"big.sarz": sarz.read_bytes()}
    server.ignore_range, server.fail_next, server.cut_next, server.stall_s = False, 0, 0, 0.0
    seen = []
    for window in ((2048, 2048, 512, 512), (1792 + 97, 2304 + 97, 512, 512), (255, 1279, 512, 512)):
        server.reset_counts()
        assert main(["reconstruct", server.url("big.sarz"), str(tmp_path / "remote.tif"), "--overwrite",
                     "--window", *map(str, window)]) == 0
        capsys.readouterr()
        served_bytes, requests = server.bytes_served, server.requests
        reconstruct_raster(sarz, tmp_path / "local.tif", window=window, overwrite=True)
        with rasterio.open(tmp_path / "remote.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
            ra, rb = a.read(), b.read()
            assert ra.shape == (1, 512, 512) and ra.tobytes() == rb.tobytes()
            assert np.isfinite(ra).mean() > 0.99
        seen.append(f"window {window}: {served_bytes} of {size} bytes ({100 * served_bytes / size:.1f} %) "
                    f"in {requests} requests")
        assert served_bytes < 0.10 * size, (window, served_bytes, size)
        assert requests < 120
    print("\n".join(seen))
