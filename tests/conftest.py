"""Shared fixtures: real SAR data from ../shared/data/sar (or $SARAE_DATA) and headless Qt."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt/QGIS import

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAR_DATA = Path(os.environ.get("SARAE_DATA", ROOT.parent / "shared" / "data" / "sar"))


def crop_band1(src, dst, width: int, height: int, col: int = 0, row: int = 0) -> Path:
    """Band 1 of `src` from (col, row), width × height, as a plain GeoTIFF `dst` (no georeference): a real crop."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        data = ds.read(1, window=Window(col, row, width, height))
    with rasterio.open(dst, "w", driver="GTiff", width=width, height=height, count=1, dtype=data.dtype) as out:
        out.write(data, 1)
    return Path(dst)


@pytest.fixture(scope="session")
def sar_data() -> Path:
    """Folder with the real SAR rasters; the test run fails loudly if it is missing."""
    assert SAR_DATA.is_dir(), f"real SAR data not found at {SAR_DATA} (set SARAE_DATA)"
    return SAR_DATA


@pytest.fixture(scope="session")
def spain_db(sar_data) -> Path:
    """Sen1Floods11 VV+VH dB float32, EPSG:4326 geotransform, nodata NaN, 512x512."""
    return sar_data / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"


@pytest.fixture(scope="session")
def kerala_dn(sar_data) -> Path:
    """Sentinel-1 GRD DN amplitude uint16 with 210 GCPs, 1280x837, zeros on the border."""
    return sar_data / "s1_iw_grdh_kerala_20180716_vv_dn.tiff"


@pytest.fixture(scope="session")
def opera_lin(sar_data) -> Path:
    """OPERA RTC linear power float32, nodata NaN, 100x100."""
    return sar_data / "s1_opera_rtc_t137-292319-iw2_20211119_vv_lin.tif"


@pytest.fixture(scope="session")
def tsx_complex(sar_data) -> Path:
    """TerraSAR-X SLC as (re, im) float32 .npy, 256x256."""
    return sar_data / "tsx_slc_merlin_test_256_reim.npy"


@pytest.fixture(scope="session")
def camargue_db(sar_data) -> Path:
    """Camargue dB float32, nodata -99, 268x217 (smaller than a patch in rows)."""
    return sar_data / "s1_iw_grd_camargue_20150309_asc_vv_db.tif"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, spain_db):
    """A small real model bundle (untrained weights, scaling fitted on the Spain chip) for fast codec tests."""
    import torch

    from sar_ae_core.nn.model_io import save_bundle
    from sar_ae_core.nn.models import ModelConfig, build_model
    from sar_ae_core.scaling import fit_scaling

    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="res_cbam", base_channels=8, latent_channels=8))
    path = tmp_path_factory.mktemp("models") / "tiny-test.pt"
    save_bundle(path, model.eval(), fit_scaling([spain_db]), "tiny-test")
    return str(path)


@pytest.fixture(scope="session")
def default_bundle():
    """The bundled default model (trained on real Sentinel-1 data); the suite fails if it is missing."""
    from sar_ae_core.nn.model_io import DEFAULT_MODEL, resolve_model

    return str(resolve_model(DEFAULT_MODEL))
