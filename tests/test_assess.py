"""`assess` on real rasters: JPEG2000-degraded copies made in the test, streaming vs whole-image metrics,
GeoTIFF maps on the reference grid, and clear exit-2 errors."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from sar_ae_core.quality import metrics as M
from sar_ae_core.quality.assess import assess_rasters
from sar_ae_core.cli import main
from sar_ae_core.quality.jpeg2000 import jpeg2000_twin


@pytest.fixture(scope="module")
def jp2_copies(tmp_path_factory, spain_db):
    d = tmp_path_factory.mktemp("jp2")
    out = {}
    for bpp in (0.25, 1.0, 4.0):
        facts = jpeg2000_twin(spain_db, d / f"spain_jp2_{bpp}.tif", bpp)
        out[bpp] = (d / f"spain_jp2_{bpp}.tif", facts)
    return out


def test_higher_rate_gives_higher_psnr_ssim_and_epi(spain_db, jp2_copies):
    reports = {bpp: assess_rasters(spain_db, path) for bpp, (path, _) in jp2_copies.items()}
    rates = [jp2_copies[b][1]["bpp"] for b in sorted(reports)]
    assert rates == sorted(rates) and abs(rates[1] - 1.0) < 0.15
    for key in ("psnr", "ssim", "epi"):
        values = [reports[b][key] for b in sorted(reports)]
        assert values[0] < values[1] < values[2], (key, values)
    assert reports[4.0]["psnr"] > 35 and reports[0.25]["psnr"] < 27
    assert reports[0.25]["enl_ratio"] > 1.1  # low-rate JPEG2000 smooths speckle
    for r in reports.values():
        assert r["valid_fraction"] == 1.0
        assert set(r) >= {"psnr", "ssim", "rmse_db", "enl_ratio", "epi", "valid_fraction"}


def test_identical_rasters_score_perfectly(spain_db):
    r = assess_rasters(spain_db, spain_db)
    assert r["psnr"] == math.inf and r["rmse_db"] == 0.0
    assert r["ssim"] == pytest.approx(1.0, abs=1e-12) and r["epi"] == pytest.approx(1.0, abs=1e-12)
    assert r["enl_ratio"] == pytest.approx(1.0, abs=1e-12)


def test_streaming_matches_whole_image_metrics(spain_db, jp2_copies):
    path = jp2_copies[1.0][0]
    streamed = assess_rasters(spain_db, path, bands="1", block=100)
    with rasterio.open(spain_db) as a, rasterio.open(path) as b:
        ref, test = a.read(1).astype(np.float64), b.read(1).astype(np.float64)
    lo, hi = streamed["bands"][0]["range_db"]
    whole = M.summarize(ref, test, None, lo, hi)
    for key in ("psnr", "ssim", "rmse_db", "epi", "valid_fraction"):
        assert streamed[key] == pytest.approx(whole[key], rel=1e-9), key
    assert streamed["enl_ratio"] == pytest.approx(whole["enl_ratio"], rel=0.02)
    assert lo == pytest.approx(np.percentile(ref, 1), abs=0.01) and hi == pytest.approx(np.percentile(ref, 99), abs=0.01)


def test_maps_are_georeferenced_and_agree_with_the_scalars(tmp_path, spain_db, jp2_copies):
    path = jp2_copies[1.0][0]
    report = assess_rasters(spain_db, path, maps_dir=tmp_path, block=200)
    with rasterio.open(spain_db) as src:
        crs, transform, ref = src.crs, src.transform, src.read().astype(np.float64)
    with rasterio.open(path) as t:
        test = t.read().astype(np.float64)
    for kind in ("abs_error_db", "enl_ratio", "epi"):
        with rasterio.open(tmp_path / f"{kind}.tif") as m:
            assert m.crs == crs and m.transform == transform and m.count == 2
            data = m.read()
        if kind == "abs_error_db":
            np.testing.assert_allclose(data.mean(), np.abs(test - ref).mean(), rtol=1e-6)
            rmse = math.sqrt(np.mean(data.astype(np.float64) ** 2))
            assert rmse == pytest.approx(report["rmse_db"], rel=1e-5)
        elif kind == "epi":
            assert 0.7 < np.nanmedian(data) <= 1.0
        else:
            assert np.nanmedian(data) > 1.0  # JPEG2000 smooths locally


def test_cli_assess_json_and_errors(tmp_path, spain_db, camargue_db, jp2_copies, capsys):
    out = tmp_path / "m.json"
    assert main(["assess", str(spain_db), str(jp2_copies[4.0][0]), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["psnr"] > 35 and len(data["bands"]) == 2
    assert main(["assess", str(spain_db), str(camargue_db), "--units", "db"]) == 2
    err = capsys.readouterr().err
    assert "grid differs" in err and str(camargue_db) in err and err.count("\n") == 1
    assert main(["assess", str(spain_db), str(tmp_path / "nope.tif")]) == 2
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "text.tif").write_text("hello")
    assert main(["assess", str(spain_db), str(tmp_path / "text.tif")]) == 2
    assert "not a readable raster" in capsys.readouterr().err
    assert main(["assess", str(spain_db), str(spain_db), "--json", str(out)]) == 2  # exists, no --overwrite
    assert json.loads(out.read_text())["psnr"] > 35


def test_module_entry_point_exit_code(tmp_path, spain_db):
    proc = subprocess.run([sys.executable, "-m", "sar_ae_core", "assess", str(spain_db), str(tmp_path / "x.tif")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "x.tif: file not found" in proc.stderr
