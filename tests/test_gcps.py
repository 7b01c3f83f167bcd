"""Packed ground control points in `.sarz` headers: every bit kept in about half the bytes."""

import json

import numpy as np
import pytest
import rasterio

from sar_ae_core.cli import main
from sar_ae_core.io.gcps import pack_gcps, unpack_gcps
from sar_ae_core.io.raster import Georef, open_raster


def _bits(gcps):
    return np.array([g[:5] for g in gcps], np.float64).view(np.uint64)


def test_pack_round_trips_every_bit():
    rng = np.random.default_rng(4)
    rows, cols = np.meshgrid(np.linspace(0, 837, 10), np.linspace(0, 1280, 21), indexing="ij")
    gcps = [(float(r), float(c), 78.2 - 0.00179 * c + rng.normal(0, 1e-9), 10.74 + 0.0004 * r - 1e-7 * c,
             float(rng.normal(50, 200)), str(k + 1), "") for k, (r, c) in enumerate(zip(rows.ravel(), cols.ravel()))]
    gcps[3] = gcps[3][:4] + (-0.0,) + gcps[3][5:]          # signed zero, a negative height and a huge value
    gcps[7] = gcps[7][:4] + (-1e300,) + gcps[7][5:]
    packed = pack_gcps(gcps)
    back = unpack_gcps(packed)
    assert back == gcps and np.array_equal(_bits(back), _bits(gcps))
    assert len(packed) < 0.6 * len(json.dumps([list(g) for g in gcps]))
    no_ids = [g[:5] + ("", "") for g in gcps]
    assert unpack_gcps(pack_gcps(no_ids)) == no_ids
    assert pack_gcps([g[:5] + ("a", "") for g in gcps]) is None        # other ids: the plain list
    assert pack_gcps([g[:6] + ("note",) for g in gcps]) is None


@pytest.mark.parametrize("bad", ["z1:", "z1:!!!!", "z2:abc", "z1:" + "0" * 40, 5])
def test_damaged_packed_gcps_are_refused(bad):
    with pytest.raises(ValueError):
        unpack_gcps(bad)


def test_gcp_georeference_survives_in_half_the_header(tmp_path, kerala_dn, tiny_bundle, capsys):
    """Kerala's 210 GCPs: packed in the header (a plain JSON list before: still read), the reconstruction carries
    exactly the source's GCPs and CRS, and the header shrank by ~3 kB."""
    sarz, out = tmp_path / "k.sarz", tmp_path / "k.tif"
    assert main(["compress", str(kerala_dn), str(sarz), "--model", tiny_bundle]) == 0
    assert main(["reconstruct", str(sarz), str(out), "--model", tiny_bundle]) == 0
    with rasterio.open(kerala_dn) as a, rasterio.open(out) as b:
        (ga, ca), (gb, cb) = a.gcps, b.gcps
        assert ca == cb and len(ga) == len(gb) == 210
        assert all((p.row, p.col, p.x, p.y, p.z, p.id) == (q.row, q.col, q.x, q.y, q.z, q.id) for p, q in zip(ga, gb))
    from sar_ae_core.codec import sarz_info

    with open_raster(kerala_dn) as r:
        plain = json.dumps(Georef(r.georef.crs_wkt, None, r.georef.gcps).to_dict()["gcps"])
        assert isinstance(r.georef.to_compact()["gcps"], str)
    assert sarz_info(sarz)["parts"]["header+index"] < 3600 < len(plain) // 4
    # a header with the plain list (what 1.1 files hold) reads the same GCPs
    g = Georef.from_dict({"crs": "EPSG:4326", "gcps": json.loads(plain)})
    with open_raster(kerala_dn) as r:
        assert g.gcps == r.georef.gcps
