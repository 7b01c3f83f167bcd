"""The JPEG2000 twin: rate matched from its own bytes, decoded onto the source grid."""

import rasterio

from sar_ae_core.quality.jpeg2000 import jpeg2000_twin


def test_twin_matches_the_rate_and_the_grid(tmp_path, spain_db):
    res = jpeg2000_twin(spain_db, tmp_path / "twin.tif", 0.5)
    assert abs(res["bpp"] / 0.5 - 1) < 0.05
    with rasterio.open(spain_db) as src, rasterio.open(tmp_path / "twin.tif") as twin:
        assert (twin.crs, twin.transform, twin.count) == (src.crs, src.transform, src.count)
    assert [p.name for p in tmp_path.iterdir()] == ["twin.tif"]
