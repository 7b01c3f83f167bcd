"""The JPEG2000 twin: rate matched from its own bytes, decoded onto the source grid."""

import rasterio

from sar_ae_core.quality.jpeg2000 import jpeg2000_twin


def test_twin_matches_the_rate_and_the_grid(tmp_path, spain_db):
    res = jpeg2000_twin(spain_db, tmp_path / "twin.tif", 0.5)
    assert abs(res["bpp"] / 0.5 - 1) < 0.05
    with rasterio.open(spain_db) as src, rasterio.open(tmp_path / "twin.tif") as twin:
        assert (twin.crs, twin.transform, twin.count) == (src.crs, src.transform, src.count)
    assert [p.name for p in tmp_path.iterdir()] == ["twin.tif"]


def test_twin_brackets_the_rate_where_openjpeg_cannot_hit_it(tmp_path, tsx_complex):
    """OpenJPEG's rate control is coarse on a 256² raster: where the closest file misses the target by more than
    1 %, the twin also decodes the closest file on the other side, so the target lies between the two."""
    bracketed = 0
    for bpp in (0.25, 0.5, 1.0, 2.0):
        res = jpeg2000_twin(tsx_complex, tmp_path / f"twin_{bpp}.tif", bpp, bracket=True)
        other = res["bracket"]
        if other is None:
            assert abs(res["bpp"] / bpp - 1) <= 0.01
            continue
        bracketed += 1
        assert min(res["bpp"], other["bpp"]) < bpp < max(res["bpp"], other["bpp"])
        assert abs(res["bpp"] - bpp) <= abs(other["bpp"] - bpp)
        with rasterio.open(other["reconstruction"]) as a, rasterio.open(res["reconstruction"]) as b:
            assert (a.width, a.height) == (b.width, b.height) == (256, 256)
            assert (a.read() != b.read()).any()
    assert bracketed >= 1
