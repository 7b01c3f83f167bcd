"""Tests of the reconstruction losses (training.losses)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    CombinedLoss,
    LossConfig,
    gradient_loss,
    ms_ssim_loss,
    ms_ssim_window_size,
    mse_loss,
    ssim_loss,
    ssim_window_size,
)

LOSSES = {"mse": mse_loss, "ssim": ssim_loss, "ms_ssim": ms_ssim_loss, "gradient": gradient_loss}


def _image(size: int = 64, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth texture with edges in [0.2, 0.8], so noise is clearly visible to every loss."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 1, size // 8, size // 8, generator=g)
    img = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    img[..., size // 4 : size // 2, :] += 0.3  # a step edge
    return 0.2 + 0.6 * (img - img.min()) / (img.max() - img.min())


def _noise(shape: torch.Size, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("size", [32, 64, 256])
def test_identical_inputs_give_zero(name: str, size: int) -> None:
    x = _image(size)
    assert abs(float(LOSSES[name](x.clone(), x))) < 1e-6


@pytest.mark.parametrize("name", LOSSES)
def test_loss_grows_with_noise(name: str) -> None:
    x = _image(64)
    n = _noise(x.shape)
    values = [float(LOSSES[name](x + s * n, x)) for s in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert values[0] < 1e-6
    assert all(b > a for a, b in zip(values, values[1:])), values
    # at noise 0.3 each loss is clearly above 0
    assert values[-1] > 0.05, values


def test_mse_value() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x_hat = torch.full_like(x, 0.5)
    assert float(mse_loss(x_hat, x)) == pytest.approx(0.25)


def _mask(x: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(x)
    mask[..., :, 40:] = 0  # a nodata strip on the right
    mask[0, ..., :10, :] = 0  # and at the top of the first image
    return mask


@pytest.mark.parametrize("name", LOSSES)
def test_masked_loss_ignores_invalid_pixels(name: str) -> None:
    x = _image(64)
    mask = _mask(x)
    x_hat = (x + 0.05 * _noise(x.shape)).requires_grad_(True)
    loss = LOSSES[name](x_hat, x, mask)
    x_hat2 = torch.where(mask > 0, x_hat.detach(), torch.rand(x.shape, generator=torch.Generator().manual_seed(9)))
    assert float(loss.detach()) == pytest.approx(float(LOSSES[name](x_hat2, x, mask)), abs=1e-7)
    # the unmasked loss does see the change, so the test above is meaningful
    assert abs(float(LOSSES[name](x_hat2, x)) - float(LOSSES[name](x_hat.detach(), x))) > 1e-3
    loss.backward()
    assert float(x_hat.grad[mask == 0].abs().max()) == 0.0
    assert float(x_hat.grad[mask == 1].abs().max()) > 0.0


def test_masked_mse_is_mean_over_valid_pixels() -> None:
    x = _image(64)
    mask = _mask(x)
    x_hat = x + 0.1 * _noise(x.shape)
    valid = mask.bool()
    expected = float(((x_hat - x)[valid] ** 2).mean())
    assert float(mse_loss(x_hat, x, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(mse_loss(x_hat, x, valid)) == pytest.approx(expected, rel=1e-6)  # bool mask
    # all-invalid mask gives 0, not NaN
    assert float(mse_loss(x_hat, x, torch.zeros_like(mask))) == 0.0


def test_window_sizes() -> None:
    assert ssim_window_size(256, 256) == 11
    assert ssim_window_size(8, 64) == 7
    assert ms_ssim_window_size(256, 256) == 11
    assert ms_ssim_window_size(161, 500) == 11
    assert ms_ssim_window_size(160, 500) == 9
    assert ms_ssim_window_size(128, 128) == 7
    assert ms_ssim_window_size(64, 64) == 3
    assert ms_ssim_window_size(33, 64) == 3
    assert ms_ssim_window_size(32, 64) is None


def test_ms_ssim_falls_back_to_ssim_on_small_inputs() -> None:
    x = _image(32)
    x_hat = x + 0.05 * _noise(x.shape)
    assert float(ms_ssim_loss(x_hat, x)) == pytest.approx(float(ssim_loss(x_hat, x)), abs=1e-7)


@pytest.mark.parametrize("structural", ["ssim", "ms_ssim"])
@pytest.mark.parametrize("gradient_weight", [0.0, 0.25])
def test_combined_loss_components_sum_to_total(structural: str, gradient_weight: float) -> None:
    cfg = LossConfig(mse_weight=0.7, ssim_weight=0.3, structural=structural, gradient_weight=gradient_weight)
    loss_fn = CombinedLoss(cfg)
    x = _image(64)
    x_hat = (x + 0.1 * _noise(x.shape)).requires_grad_(True)
    total, comps = loss_fn(x_hat, x)
    expected_keys = {"mse", structural} | ({"gradient"} if gradient_weight > 0 else set())
    assert set(comps) == expected_keys == set(loss_fn.weights)
    assert all(v > 1e-3 for v in comps.values()), comps
    weighted = sum(loss_fn.weights[k] * v for k, v in comps.items())
    assert float(total.detach()) == pytest.approx(weighted, rel=1e-6)
    assert comps["mse"] == pytest.approx(float(mse_loss(x_hat.detach(), x)), rel=1e-6)
    total.backward()
    assert float(x_hat.grad.abs().sum()) > 0

    identical_total, identical = loss_fn(x.clone(), x)
    assert abs(float(identical_total)) < 1e-6
    assert all(abs(v) < 1e-6 for v in identical.values()), identical


def test_combined_loss_zero_weight_term_is_reported_but_not_added() -> None:
    loss_fn = CombinedLoss({"mse_weight": 1.0, "ssim_weight": 0.0})
    x = _image(64)
    x_hat = x + 0.1 * _noise(x.shape)
    total, comps = loss_fn(x_hat, x)
    assert comps["ssim"] > 0.01
    assert float(total) == pytest.approx(comps["mse"], rel=1e-6)


def test_combined_loss_with_mask_ignores_invalid_pixels() -> None:
    loss_fn = CombinedLoss(LossConfig(structural="ms_ssim", gradient_weight=0.5))
    x = _image(64)
    mask = _mask(x)
    x_hat = x + 0.05 * _noise(x.shape)
    total1, comps1 = loss_fn(x_hat, x, mask)
    total2, comps2 = loss_fn(torch.where(mask > 0, x_hat, 1.0 - x_hat), x, mask)
    assert float(total1) == pytest.approx(float(total2), abs=1e-7)
    assert comps1 == pytest.approx(comps2, abs=1e-7)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"structural": "lpips"}, "structural must be 'ssim' or 'ms_ssim'"),
        ({"mse_weight": -1.0}, "mse_weight must be a finite number >= 0"),
        ({"gradient_weight": float("nan")}, "gradient_weight must be a finite number >= 0"),
        ({"mse_weight": 0.0, "ssim_weight": 0.0}, "at least one"),
    ],
    ids=["structural", "negative", "nan", "all-zero"],
)
def test_loss_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)


def test_loss_config_round_trip_and_unknown_key() -> None:
    cfg = LossConfig(mse_weight=0.2, ssim_weight=0.8, structural="ms_ssim", gradient_weight=0.1)
    assert LossConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        LossConfig.from_dict({"l1_weight": 1.0})


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mse_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 4))
