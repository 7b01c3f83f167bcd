"""The bit-allocation map: exact (its sum is the file's coded latent bits within 1 %), seamless across tiles."""

import numpy as np
import pytest
import rasterio

from sar_ae_core.cli import main


@pytest.fixture(scope="module")
def umbra(sar_data):
    """Umbra X-band spotlight, 2000 x 2000, rotated geotransform: 8 x 8 tiles of 256 px."""
    return sar_data / "train" / "umbra04_gec_tanna_yasur_20230212_amp_u8.tif"


@pytest.mark.slow
def test_bit_map_sums_to_the_coded_bits_and_has_no_tile_seams(tmp_path, umbra, capsys):
    sarz, bm = tmp_path / "u.sarz", tmp_path / "bits.tif"
    assert main(["compress", str(umbra), str(sarz)]) == 0
    assert main(["bitmap", str(sarz), str(bm)]) == 0
    from sar_ae_core.codec import sarz_info

    latent_bits = sarz_info(sarz)["parts"]["latents"] * 8
    with rasterio.open(bm) as ds, rasterio.open(umbra) as src:
        a = ds.read(1).astype(np.float64)
        assert (ds.crs, ds.transform) == (src.crs, src.transform)  # on the source's (rotated) grid
        assert ds.tags()["SARAE_MAP"] == "bit_allocation"
    assert abs(a.sum() / latent_bits - 1) < 0.01
    # seams: gradient across the 7 tile borders vs the same step between every other pair of latent cells
    # (the map lives on the 8-px cell grid: steps are compared at the same phase of it)
    gx, gy = np.abs(np.diff(a, axis=1)), np.abs(np.diff(a, axis=0))
    bx = [k for k in range(gx.shape[1]) if (k + 1) % 256 == 0]
    by = [k for k in range(gy.shape[0]) if (k + 1) % 256 == 0]
    ox = [k for k in range(7, gx.shape[1], 8) if k not in bx]
    oy = [k for k in range(7, gy.shape[0], 8) if k not in by]
    rx = gx[:, bx].mean() / gx[:, ox].mean()
    ry = gy[by].mean() / gy[oy].mean()
    assert abs(rx - 1) < 0.05 and abs(ry - 1) < 0.05, (rx, ry)
    assert a.min() >= 0 and a.std() > 0.05 * a.mean()  # it does show where the bits go


def test_bit_map_of_a_uniform_coded_file_says_why(tmp_path, spain_db, tiny_bundle, capsys):
    sarz = tmp_path / "u.sarz"
    assert main(["compress", str(spain_db), str(sarz), "--model", tiny_bundle]) == 0
    capsys.readouterr()
    assert main(["bitmap", str(sarz), str(tmp_path / "b.tif"), "--model", tiny_bundle]) == 2
    assert "factorized-range" in capsys.readouterr().err
    assert not (tmp_path / "b.tif").exists()
