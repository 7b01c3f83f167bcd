"""Fuzz the `.sarz` decode path with structure-aware mutations whose checksums are repaired.

Cases: every header field replaced by values of the wrong type or range, or deleted; deeply nested JSON; zstd
bombs in the header, the chunk index, the mask/escape and latent chunks (small frames declaring gigabytes);
truncations; bit flips. Each case is decoded (`info` and `reconstruct`) in a worker process under an address-space
limit; the outcome must be the project's input error (exit 2 in the CLI) or a complete, valid GeoTIFF of the size
the header declares. Anything else — another exception (a traceback in the CLI), a hang, a crashed worker, a
partial file left behind — is counted as a failure and listed.

    python benchmarks/fuzz_sarz.py --cases 10000 --out benchmarks/results/fuzz_sarz.json
    python benchmarks/fuzz_sarz.py --cases 3000 --base wavelet --out benchmarks/results/fuzz_sarz_wavelet.json

The test suite runs a few hundred cases (tests/test_schema.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sar_ae_core.coding.container import (  # noqa: E402
    _FOOTER, _FOOTER2, _PRE, FORMAT_MAJOR, FORMAT_MINOR, _header_dict, _leb128, chunk_index, footer_v3, pre_v3)

HOSTILE_VALUES = [None, True, -1, 0, 1, 3, 10 ** 6, 10 ** 9, 2 ** 63, -1e308, 1e308, 0.5, "", "x", "nan",
                  [], [1], {}, {"a": 1}, "A" * 5000]


# ------------------------------------------------------------------------------------------------
# Writing mutated files (checksums repaired)
# ------------------------------------------------------------------------------------------------
def parse(data: bytes) -> dict:
    """The parts of a `.sarz`: version, header dict (every field, as a reader sees it), chunk bytes."""
    import io

    from sar_ae_core.coding.container import ContainerReader

    major, minor = data[8], data[9]
    if major < 3:
        _, major, minor, _, _ = _PRE.unpack(data[:_PRE.size])
    with ContainerReader.from_file(io.BytesIO(data), len(data), "base.sarz") as r:
        return {"major": major, "minor": minor, "header": r.header,
                "chunks": [r.chunk(i) for i in range(r.chunk_count)]}


def build(header, chunks: list[bytes], header_text: bytes | None = None, header_body: bytes | None = None,
          index_body: bytes | None = None, major: int = FORMAT_MAJOR, minor: int = FORMAT_MINOR) -> bytes:
    """A `.sarz` with valid CRCs around whatever header/chunks/index it is given, in the layout of `major`
    (3.x: u8 version, LEB128 header length, zstd frame without its magic, one CRC of header and index, 5-byte
    footer; 2.x: LEB128 index and 16-byte footer; 1.x: zstd index, 24-byte footer)."""
    if header_body is None:
        text = header_text if header_text is not None else json.dumps(header, sort_keys=True).encode()
        header_body = zstandard.ZstdCompressor(level=3, dict_data=_header_dict(major), write_content_size=True,
                                               write_dict_id=False).compress(text)
    if major >= 3:
        pre = pre_v3(header_body, major, minor)
        out = bytearray(pre + header_body[4:])
    else:
        out = bytearray(_PRE.pack(b"\x89SARZ\r\n\x1a", major, minor, len(header_body), zlib.crc32(header_body)))
        out += header_body
    head_crc = zlib.crc32(bytes(out))
    for c in chunks:
        out += c
    if index_body is None:
        if major >= 2:
            index_body = chunk_index([len(c) for c in chunks], [zlib.crc32(c) for c in chunks])
        else:
            raw = np.asarray([(len(c), zlib.crc32(c)) for c in chunks], "<u4").reshape(-1, 2).tobytes()
            index_body = zstandard.ZstdCompressor(level=3).compress(raw)
    offset = len(out)
    out += index_body
    if major >= 3:
        out += footer_v3(index_body, head_crc)
    elif major >= 2:
        out += _FOOTER2.pack(len(index_body), zlib.crc32(index_body), b"SARZEND\0")
    else:
        out += _FOOTER.pack(offset, len(index_body), zlib.crc32(index_body), b"SARZEND\0")
    return bytes(out)


def bomb(declared: int) -> bytes:
    """A small zstd frame whose header declares `declared` bytes of content (the body holds far fewer)."""
    frame = bytearray(zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"\0" * 4096))
    # rewrite the frame header: descriptor with an 8-byte content size field, single segment
    fhd = frame[4]
    dict_flag = fhd & 3
    single = (fhd >> 5) & 1
    fcs_flag = fhd >> 6
    fcs_len = (1, 2, 4, 8)[fcs_flag] if (fcs_flag or single) else 0
    if fcs_flag == 0 and single:
        fcs_len = 1
    head_len = 1 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    rest = frame[4 + head_len + fcs_len:]
    new_fhd = (3 << 6) | (1 << 5)  # FCS 8 bytes, single segment, no checksum, no dict
    return bytes(frame[:4]) + bytes([new_fhd]) + struct.pack("<Q", declared) + bytes(rest)


def _leaves(d, prefix=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, prefix + (k,))
        if prefix:
            yield prefix, d
    elif isinstance(d, list) and d and len(d) < 10:
        for i, v in enumerate(d):
            yield from _leaves(v, prefix + (i,))
        yield prefix, d
    else:
        yield prefix, d


def _set(d, path, value, delete=False):
    for k in path[:-1]:
        d = d[k]
    if delete:
        del d[path[-1]]
    else:
        d[path[-1]] = value


def mutations(base: bytes, n: int, seed: int = 0):
    """Yield (kind, description, file bytes) for n cases."""
    rng = random.Random(seed)
    parts = parse(base)
    header, chunks = parts["header"], parts["chunks"]
    leaves = [p for p, _ in _leaves(header) if p]
    # fixed hostile structures first
    yield "depth", "100000-deep nested JSON", build(None, chunks, header_text=b'{"a":' * 100000 + b"1" + b"}" * 100000)
    yield "bomb", "header declares 3 GB", build(None, chunks, header_body=bomb(3 << 30))
    yield "bomb", "index declares 3 GB (1.x layout)", build(header, chunks, index_body=bomb(3 << 30), major=1, minor=2)
    yield "index", "index declares 2**30 chunks", build(header, chunks, index_body=_leb128([1 << 30]) + bytes(16))
    yield "index", "1.2 layout of the same file", build(header, chunks, major=1, minor=2)
    yield "index", "2.0 layout of the same file", build(header, chunks, major=2, minor=0)
    yield "bomb", "header declares 3 GB (2.0 layout)", build(None, chunks, header_body=bomb(3 << 30), major=2, minor=0)
    quiet = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(b"\0" * (64 << 20))
    c = list(chunks)
    c[1] = bytes([2]) + quiet  # a mask frame that expands to 64 MB without declaring it
    yield "bomb", "mask chunk expands to 64 MB (size not declared)", build(header, c)
    for i in range(min(len(chunks), 8)):
        c = list(chunks)
        c[i] = (bytes([2]) + bomb(3 << 30)) if i % 2 else (len(bomb(1 << 30)).to_bytes(4, "little") + bomb(3 << 30))
        yield "bomb", f"chunk {i} declares GBs", build(header, c)
    k = 0
    while True:
        k += 1
        r = rng.random()
        h = json.loads(json.dumps(header))
        if r < 0.55:
            path = rng.choice(leaves)
            value = rng.choice(HOSTILE_VALUES)
            _set(h, path, value)
            yield "field", f"{'.'.join(map(str, path))} = {str(value)[:30]}", build(h, chunks)
        elif r < 0.65:
            path = rng.choice(leaves)
            _set(h, path, None, delete=True)
            yield "delete", f"del {'.'.join(map(str, path))}", build(h, chunks)
        elif r < 0.75:  # consistent-looking but contradictory sizes
            key = rng.choice(["width", "height", "tile", "halo_cells", "downsample"])
            value = rng.choice([1, 2, 7, 8, 16, 3000, 10 ** 6, 10 ** 9])
            h["tiling"][key] = value
            if rng.random() < 0.5 and key in ("width", "height"):
                h["source"][key] = value
            yield "tiling", f"tiling.{key} = {value}", build(h, chunks)
        elif r < 0.85:
            data = base[: rng.randrange(1, len(base))]
            yield "truncate", f"truncated to {len(data)}", data
        else:
            data = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                p = rng.randrange(len(data))
                data[p] ^= 1 << rng.randrange(8)
            yield "bitflip", "bit flips", bytes(data)
        if k >= n:
            return


# ------------------------------------------------------------------------------------------------
# Running cases
# ------------------------------------------------------------------------------------------------
def _limit(as_bytes: int):
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))


def run_case(path: str, out_dir: str, model: str | None) -> tuple[str, str]:
    """('input-error' | 'decoded' | 'bad-output' | 'exception', detail) of decoding one file in this process."""
    from sar_ae_core.codec import reconstruct_raster, sarz_info
    from sar_ae_core.errors import SarInputError

    out = os.path.join(out_dir, "out.tif")
    try:
        info = sarz_info(path)
        reconstruct_raster(path, out, model=model, overwrite=True)
    except SarInputError as exc:
        left = [p for p in os.listdir(out_dir)]
        if left:
            return "bad-output", f"input error but left {left}: {exc}"
        return "input-error", str(exc)[:200]
    except MemoryError:
        return "exception", "MemoryError"
    except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
        return "exception", f"{type(exc).__name__}: {str(exc)[:200]}"
    import rasterio

    try:
        with rasterio.open(out) as ds:
            ok = (ds.width, ds.height, ds.count) == (info["width"], info["height"], info["bands"])
            ds.read(1, window=((0, min(ds.height, 16)), (0, min(ds.width, 16))))
    except Exception as exc:  # noqa: BLE001
        return "bad-output", f"unreadable output: {exc}"
    finally:
        for p in os.listdir(out_dir):
            os.unlink(os.path.join(out_dir, p))
    return ("decoded", "") if ok else ("bad-output", "size differs from the header")


def _worker(conn, model, as_bytes):
    import warnings

    warnings.simplefilter("ignore")  # rasterio's not-georeferenced notes on mutated georefs: not what is counted
    _limit(as_bytes)
    import sar_ae_core.codec  # noqa: F401 - import once per worker
    while True:
        job = conn.recv()
        if job is None:
            return
        path, out_dir = job
        conn.send(run_case(path, out_dir, model))


def fuzz(base_file: str, n: int, model: str | None = None, seed: int = 0, as_gb: float = 2.0,
         timeout: float = 60.0) -> dict:
    """Run n mutated cases of base_file; returns counts and the failures."""
    import multiprocessing as mp

    base = Path(base_file).read_bytes()
    counts: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    failures = []
    ctx = mp.get_context("spawn")  # never fork a process that may hold torch threads
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        case_path = os.path.join(tmp, "case.sarz")
        out_dir = os.path.join(tmp, "out")
        os.mkdir(out_dir)
        proc = conn = None

        def start():
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, model, int(as_gb * (1 << 30))), daemon=True)
            p.start()
            return p, parent

        for kind, desc, data in mutations(base, n, seed):
            if proc is None or not proc.is_alive():
                proc, conn = start()
            Path(case_path).write_bytes(data)
            try:
                conn.send((case_path, out_dir))
                answered = conn.poll(timeout)
            except OSError:
                answered = True  # the worker is gone: recv reports it
            if answered:
                try:
                    outcome, detail = conn.recv()
                except (EOFError, OSError):
                    outcome, detail = "crash", "worker died"
            else:
                proc.kill()
                proc.join()
                proc = None
                outcome, detail = "hang", f"no answer in {timeout:.0f} s"
            if proc is not None and not proc.is_alive():
                outcome, detail = "crash", f"worker exit {proc.exitcode}"
                proc = None
            leftovers = os.listdir(out_dir) + [p for p in os.listdir(tmp) if ".part" in p]
            if leftovers:
                outcome, detail = "bad-output", f"left {leftovers}"
                for p in os.listdir(out_dir):
                    os.unlink(os.path.join(out_dir, p))
            counts[outcome] = counts.get(outcome, 0) + 1
            by_kind.setdefault(kind, {})
            by_kind[kind][outcome] = by_kind[kind].get(outcome, 0) + 1
            if outcome not in ("input-error", "decoded"):
                failures.append({"kind": kind, "case": desc, "outcome": outcome, "detail": detail})
        if proc is not None:
            conn.send(None)
            proc.join(5)
    return {"cases": sum(counts.values()), "counts": counts, "by_kind": by_kind, "failures": failures[:200],
            "failure_count": len(failures), "seconds": round(time.perf_counter() - t0, 1),
            "address_space_limit_gb": as_gb, "base_file": os.path.basename(base_file)}


def make_base(folder: str, model: str | None = None, size: int = 160) -> str:
    """A small real `.sarz` to mutate: a size×size crop of the bundled Sentinel-1 sample (both bands, its
    georeference, bright targets so the escapes are exercised), default model, 2x2 tiles of 128 px."""
    import rasterio
    from rasterio.windows import Window

    from sar_ae_core.cli import SAMPLE
    from sar_ae_core.codec import compress_raster

    crop = os.path.join(folder, "crop.tif")
    with rasterio.open(SAMPLE) as src:
        win = Window(0, 0, size, size)
        profile = dict(src.profile, width=size, height=size, transform=src.window_transform(win), tiled=False)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=win))
            dst.descriptions = src.descriptions
    path = os.path.join(folder, "base.sarz")
    compress_raster(crop, path, model=model, tile=128, overwrite=True)
    return path


def make_base_gcps_residual(folder: str, size: int = 192) -> str:
    """A `.sarz` with this release's fields: a crop of the Kerala GRD DN scene (uint16, 210 GCPs: packed in the
    header), per-file adapted tables, and a residual layer (frames in the mask chunks), 128 px tiles."""
    import rasterio
    from rasterio.windows import Window

    from sar_ae_core.refine import compress_with_residual

    data = Path(os.environ.get("SARAE_DATA", ROOT.parent / "shared" / "data" / "sar"))
    crop = os.path.join(folder, "kerala.tif")
    with rasterio.open(data / "s1_iw_grdh_kerala_20180716_vv_dn.tiff") as src:
        win = Window(300, 200, size, size)
        gcps, crs = src.gcps
        shifted = [type(g)(row=g.row - win.row_off, col=g.col - win.col_off, x=g.x, y=g.y, z=g.z, id=g.id,
                           info=g.info) for g in gcps]
        profile = dict(driver="GTiff", width=size, height=size, count=1, dtype=src.dtypes[0], nodata=src.nodata)
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(1, window=win), 1)
            dst.gcps = (shifted, crs)
    path = os.path.join(folder, "base.sarz")
    compress_with_residual(crop, path, 2.0, tile=128, overwrite=True)
    return path


def make_base_wavelet(folder: str, size: int = 384) -> str:
    """A `.sarz` whose residual layer is in the wavelet domain (format 3.5/3.6, frames of modes 4 and 5 in the mask
    chunks, each tile's inverse reading its neighbours'): a crop of the smooth Kerala DN scene at `--rate 1`, 128 px
    tiles (3 × 3)."""
    import rasterio
    from rasterio.windows import Window

    from sar_ae_core.coding.sarz import SarzFile
    from sar_ae_core.rate import compress_to_rate

    data = Path(os.environ.get("SARAE_DATA", ROOT.parent / "shared" / "data" / "sar"))
    crop = os.path.join(folder, "kerala_w.tif")
    with rasterio.open(data / "s1_iw_grdh_kerala_20180716_vh_dn.tiff") as src:
        profile = dict(driver="GTiff", width=size, height=size, count=1, dtype=src.dtypes[0], nodata=src.nodata)
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(1, window=Window(400, 416, size, size)), 1)
    path = os.path.join(folder, "base.sarz")
    compress_to_rate(crop, path, 1.0, tile=128, overwrite=True)
    with SarzFile(path) as f:
        if f.residual_wavelet != [True]:
            raise RuntimeError("the wavelet base file has no wavelet-coded band")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-gb", type=float, default=2.0, help="address-space limit of the decoding worker")
    ap.add_argument("--base", choices=("sample", "gcps-residual", "wavelet"), default="sample",
                    help="the file to mutate: a crop of the bundled sample, a GCP-georeferenced DN crop with "
                         "adapted tables and a residual layer, or a DN crop whose layer is in the wavelet domain")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_sarz.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = {"sample": make_base, "gcps-residual": make_base_gcps_residual, "wavelet": make_base_wavelet}[
            args.base](tmp)
        report = fuzz(base, args.cases, seed=args.seed, as_gb=args.limit_gb)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("cases", "counts", "failure_count", "seconds")}))
    return 0 if report["failure_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
