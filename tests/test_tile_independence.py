"""The networks do not see the tiling: a raster coded in 128-px and in 256-px tiles (the encoder and decoder run on
windows with their whole receptive field as halo, invalid pixels filled with one value per raster) comes back the
same, on the real DN scene with its nodata border — so the codec cannot put steps on its tile grid."""

import numpy as np
import rasterio

from sar_ae_core.codec import compress_raster, reconstruct_raster


def test_reconstruction_does_not_depend_on_the_tile_size(tmp_path, kerala_dn):
    with rasterio.open(kerala_dn) as ds:  # the scene's top 416 rows: its zero border crosses the tile rows
        profile = ds.profile | {"height": 416}
        data = ds.read(1, window=((0, 416), (0, ds.width)))
        gcps, crs = ds.gcps
    crop = tmp_path / "k.tif"
    with rasterio.open(crop, "w", **profile) as dst:
        dst.write(data, 1)
        dst.gcps = (gcps, crs)
    assert (data == 0).mean() > 0.01  # nodata pixels inside strips shared by two tile rows
    recs = {}
    for tile in (128, 256):
        compress_raster(crop, tmp_path / f"{tile}.sarz", model="sarae-q2", tile=tile, post_filter="off", gain=0.5)
        reconstruct_raster(tmp_path / f"{tile}.sarz", tmp_path / f"{tile}.tif", units="db")
        with rasterio.open(tmp_path / f"{tile}.tif") as ds:
            recs[tile] = ds.read(1, masked=True)
    a, b = recs[128], recs[256]
    assert (a.mask == b.mask).all() and (~a.mask).sum() > 0.9 * (data > 0).sum()
    diff = np.abs(a.filled(0).astype(np.float64) - b.filled(0))
    # the same latent symbols and the same decode: float noise only (a symbol that differed would move the pixels of its
    # 8x8-px cell and its neighbours by a tenth of a dB or more)
    assert diff.max() < 1e-3, (diff.max(), int((diff > 1e-3).sum()))
