"""Learned factorized prior: deterministic integer tables, exact range coding, rate estimate vs real bytes."""

import numpy as np
import pytest
import rasterio
import torch

from sar_ae_core.codec import compress_raster, reconstruct_raster, sarz_info
from sar_ae_core.nn.entropy import FactorizedPrior, FactorizedRangeCodec, EntropyTables
from sar_ae_core.nn.model_io import load_bundle, save_bundle
from sar_ae_core.nn.models import ModelConfig, build_model
from sar_ae_core.scaling import fit_scaling


@pytest.fixture(scope="module")
def fitted_prior():
    torch.manual_seed(0)
    prior = FactorizedPrior(6)
    scales = torch.tensor([0.4, 1.0, 2.0, 4.0, 8.0, 16.0]).view(1, 6, 1, 1)
    opt = torch.optim.Adam(prior.parameters(), 1e-2)
    for _ in range(250):
        data = torch.randn(16, 6, 8, 8) * scales
        _, lik = prior(data)
        loss = -torch.log2(lik).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prior.eval(), scales


def test_tables_are_integer_normalised_and_reproducible(fitted_prior):
    prior, _ = fitted_prior
    t1, t2 = prior.build_tables(), prior.build_tables()
    assert t1.to_dict() == t2.to_dict()
    for counts in t1.counts:
        assert counts.sum() == 1 << t1.precision and counts.min() >= 1
    assert EntropyTables.from_dict(t1.to_dict()).to_dict() == t1.to_dict()
    widths = [len(c) for c in t1.counts]
    assert widths == sorted(widths)  # wider latents → wider tables


def test_range_coding_is_exact_and_matches_the_estimated_rate(fitted_prior):
    prior, scales = fitted_prior
    tables = prior.build_tables()
    codec = FactorizedRangeCodec(tables)
    g = torch.Generator().manual_seed(5)
    y = (torch.randn(6, 64, 64, generator=g) * scales[0]).numpy()
    y[2, 3, 4] = 5000.0  # far outside the table: escape path
    payload = codec.encode(y)
    np.testing.assert_array_equal(codec.decode(payload, y.shape), np.rint(y))
    estimate_tables = tables.bits(np.rint(y))
    with torch.no_grad():
        estimate_model = float(-torch.log2(prior.likelihood(torch.from_numpy(np.rint(y))[None])).sum())
    actual = len(payload) * 8
    assert abs(actual - estimate_tables) / actual < 0.02
    assert abs(actual - estimate_model) / actual < 0.02
    assert FactorizedRangeCodec(prior.build_tables()).encode(y) == payload


def test_factorized_codec_in_the_container(tmp_path, spain_db):
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="res_cbam", base_channels=8, latent_channels=8,
                                    entropy_model="factorized")).eval()
    path = tmp_path / "fp.pt"
    save_bundle(path, model, fit_scaling([spain_db]), "fp-test")
    bundle = load_bundle(str(path))
    assert bundle.tables is not None and len(bundle.tables.counts) == 8
    facts = compress_raster(spain_db, tmp_path / "a.sarz", model=str(path), device="cpu")
    info = sarz_info(tmp_path / "a.sarz")
    assert info["codec"]["id"] == "factorized-range" and facts["bytes"] == (tmp_path / "a.sarz").stat().st_size
    outs = []
    for i in range(2):
        reconstruct_raster(tmp_path / "a.sarz", tmp_path / f"r{i}.tif", model=str(path))
        with rasterio.open(tmp_path / f"r{i}.tif") as ds:
            outs.append(ds.read())
    assert outs[0].tobytes() == outs[1].tobytes()
    # the same model still writes and reads the uniform codec
    compress_raster(spain_db, tmp_path / "u.sarz", model=str(path), device="cpu", codec="uniform-zstd")
    assert sarz_info(tmp_path / "u.sarz")["codec"]["id"] == "uniform-zstd"
    reconstruct_raster(tmp_path / "u.sarz", tmp_path / "u.tif", model=str(path))
