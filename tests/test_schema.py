"""Hostile but checksum-valid `.sarz` files: the header schema and bounded decompression turn every one into the
project's input error (or a complete, valid raster) — never a traceback, a huge allocation or a partial file."""

import json
import sys
from pathlib import Path

import pytest

from sar_ae_core.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_sarz  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return fuzz_sarz.make_base(str(tmp_path_factory.mktemp("fuzz")))


def _with(base, tmp_path, edit=None, **build):
    parts = fuzz_sarz.parse(Path(base).read_bytes())
    h = json.loads(json.dumps(parts["header"]))
    if edit:
        edit(h)
    path = tmp_path / "hostile.sarz"
    path.write_bytes(fuzz_sarz.build(h, parts["chunks"], **build))
    return path


def _set(path, value):
    def edit(h):
        d = h
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, field", [
    (_set(("tiling", "downsample"), 0), "tiling.downsample"),
    (_set(("codec",), "factorized-range"), "codec"),
    (_set(("georef",), [1, 2]), "georef"),
    (_set(("source", "dtype"), "float128"), "source.dtype"),
    (_set(("source", "units"), "watts"), "source.units"),
    (_set(("model", "name"), 42), "model.name"),
    (_set(("tiling", "halo_cells"), 10 ** 6), "tiling.halo_cells"),
    (_set(("tiling", "width"), 10 ** 9), "tiling.width"),
    (_set(("tiling", "width"), 1), "tiling.width"),          # contradicts the source width
    (_set(("source", "nodata"), 1e308), "source.nodata"),
    (_set(("mask", "step_db"), -1), "mask.step_db"),
])
def test_hostile_header_fields_are_named(base, tmp_path, capsys, edit, field):
    path = _with(base, tmp_path, edit)
    out = tmp_path / "out.tif"
    assert main(["reconstruct", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'{field}'" in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["hostile.sarz"]


@pytest.mark.slow
def test_deep_json_and_bombs_are_refused_without_allocating(base, tmp_path, capsys):
    import resource
    import subprocess

    cases = {
        "deep": dict(header_text=b'{"a":' * 100000 + b"1" + b"}" * 100000),
        "header bomb": dict(header_body=fuzz_sarz.bomb(3 << 30)),
        "index bomb": dict(index_body=fuzz_sarz.bomb(3 << 30)),
    }
    for name, build in cases.items():
        path = _with(base, tmp_path, **build)
        # in a child under a 1.5 GB address-space limit: a 3 GB allocation would fail there
        proc = subprocess.run([sys.executable, "-m", "sar_ae_core", "info", str(path)], capture_output=True,
                              text=True, timeout=120, preexec_fn=lambda: resource.setrlimit(
                                  resource.RLIMIT_AS, (3 << 29, 3 << 29)))
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, (name, proc.stderr)


@pytest.mark.slow
def test_a_few_hundred_fuzzed_files_give_input_errors_or_valid_rasters(base):
    report = fuzz_sarz.fuzz(base, 300, seed=7, as_gb=2.0, timeout=60)
    assert report["failure_count"] == 0, report["failures"][:5]
    assert report["counts"].get("input-error", 0) > 150  # the mutations do reach the checks
    assert set(report["by_kind"]) >= {"field", "delete", "tiling", "truncate", "bitflip", "bomb", "depth"}


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """A GCP-georeferenced uint16 DN crop with adapted tables and a residual layer (the fuzzer's second base)."""
    return fuzz_sarz.make_base_gcps_residual(str(tmp_path_factory.mktemp("fuzz2")))


@pytest.mark.parametrize("edit, needle", [
    (_set(("source", "nodata"), "nan"), "'source.nodata'"),                  # NaN for a uint16 source
    (_set(("tiling", "downsample"), 16), "latents are 1/16 of the raster"),  # not the model's
    (_set(("georef", "gcps"), "z1:abc"), "'georef.gcps'"),                   # damaged packed GCPs
    (_set(("mask", "residual_db"), 0), "'mask.residual_db'"),
    (_set(("codec", "adapt"), "!!"), "adapted tables"),
])
def test_hostile_fields_of_layered_files(layered, tmp_path, capsys, edit, needle):
    """What the fuzzer found on such files (tracebacks before): each is now one input error naming the problem."""
    path = _with(layered, tmp_path, edit)
    out = tmp_path / "out.tif"
    assert main(["reconstruct", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not out.exists()


def test_gcps_without_a_crs_are_written_back(layered, tmp_path):
    """A source may carry GCPs without a CRS: the reconstruction keeps the GCPs (the fuzzer found a traceback)."""
    import rasterio

    def no_crs(h):
        h["georef"].pop("crs", None)
        h["georef"].pop("crs_wkt", None)
    path = _with(layered, tmp_path, no_crs)
    out = tmp_path / "out.tif"
    assert main(["reconstruct", str(path), str(out)]) == 0
    with rasterio.open(out) as ds:
        gcps, crs = ds.gcps
        assert len(gcps) > 10 and crs is None
