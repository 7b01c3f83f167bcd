"""Validation / test metrics on held-out patches, with sar_ae_core.quality.metrics.

Per patch (only valid pixels count):

* ``loss``: the training loss (CombinedLoss with the validity mask);
* ``psnr``, ``ssim``: on the [0, 1]-scaled patch (the clipped dB range of the model's ScalingParams);
* ``enl_ratio``: ENL(reconstruction) / ENL(reference) of LINEAR intensity (``10**(dB/10)`` of
  ``ScalingParams.unit_to_db``) over the homogeneous pixels of the reference (metrics.homogeneous_mask);
  > 1 means the speckle was smoothed, < 1 that noise was added;
* ``epi``: edge preservation index on dB.

By default the latent goes through the codec's quantiser (``bits`` per value, see training.quant) so the
numbers are those a user of the codec gets; ``psnr_float`` is the PSNR without quantisation. Models
with a factorized entropy model are evaluated as the factorized-range codec uses them: latents rounded
to integers, ``bpp`` = estimated bits per pixel from the prior (and ``loss`` is the rate-distortion loss,
see `rd_loss`), ``bpp_coded`` = bits per pixel of the same latents really range-coded with integer tables built
from the current prior (what the codec's latent chunks would hold; no header, masks or index).
Reported values are means over patches, except the ENL ratio: its median over the patches where it is
defined (a ratio of variances explodes on patches the model renders flat, which would swamp a mean).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sar_ae_core.quality.metrics import enl_ratio, epi, homogeneous_mask, psnr, ssim
from sar_ae_core.scaling import ScalingParams

from sar_ae_core.nn.entropy import rate_bits

from .quant import quantize_latent


def rd_loss(distortion: torch.Tensor, bpp: torch.Tensor | float, rate_weight: float = 0.0,
            lmbda: Optional[float] = None):
    """Rate-distortion loss: ``lmbda * distortion + bpp`` when lmbda is set, else ``distortion + rate_weight * bpp``
    (bpp = estimated bits per PIXEL, -sum(log2 p) / number of pixels)."""
    if lmbda is not None:
        return lmbda * distortion + bpp
    return distortion + rate_weight * bpp


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]  # +inf (output completely flat) counts as very large
    return float(np.median(finite)) if finite else float("nan")


def patch_metrics(ref: np.ndarray, rec: np.ndarray, valid: np.ndarray, scaling: ScalingParams) -> dict[str, float]:
    """PSNR/SSIM on scaled values, ENL ratio on linear intensity, EPI on dB, for one patch."""
    ref64, rec64 = ref.astype(np.float64), rec.astype(np.float64)
    out = {"psnr": psnr(ref64, rec64, mask=valid), "ssim": ssim(ref64, rec64, mask=valid)}
    ref_db, rec_db = scaling.unit_to_db(ref64), scaling.unit_to_db(rec64)
    ref_lin, rec_lin = np.power(10.0, ref_db / 10.0), np.power(10.0, rec_db / 10.0)
    hom = homogeneous_mask(ref_lin, valid=valid)
    out["enl_ratio"] = enl_ratio(ref_lin, rec_lin, mask=hom) if hom.sum() >= 2 else float("nan")
    out["epi"] = epi(ref_db, rec_db, mask=valid)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, scaling: ScalingParams, loss_fn, device: torch.device,
             bits: Optional[int] = 8, batch_size: int = 32, max_patches: int = 0, autocast: bool = False,
             channels_last: bool = False, rate_weight: float = 0.0, lmbda: Optional[float] = None,
             coded: bool = True) -> dict[str, float]:
    """Metrics of a SarAutoencoder on a patch dataset (eval mode; the caller's training mode is restored)."""
    was_training = model.training
    model.eval()
    if max_patches and len(dataset) > max_patches:
        # evenly spread, deterministic subset: every source keeps its share
        idx = np.linspace(0, len(dataset) - 1, max_patches).round().astype(int)
        dataset = Subset(dataset, sorted(set(idx.tolist())))
    # own generator: evaluating never consumes the global random stream (exact resume)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    prior = getattr(model, "entropy", None)
    losses, weights, total_bits, total_px, coded_bits = [], [], 0.0, 0, 0
    range_codec = None
    if prior is not None and coded:
        import copy

        from sar_ae_core.nn.entropy import FactorizedRangeCodec
        from sar_ae_core.nn.hyperprior import HyperpriorRangeCodec

        # tables exactly as model_io.save_bundle builds them at export (float64 on the CPU, a copy of the prior)
        frozen = copy.deepcopy(prior).cpu().float().eval()
        tables = frozen.build_tables()
        if getattr(tables, "kind", "") == "hyperprior":
            tables.prior = frozen
            range_codec = HyperpriorRangeCodec(tables)
        else:
            range_codec = FactorizedRangeCodec(tables)
    per: dict[str, list[float]] = {"psnr": [], "ssim": [], "enl_ratio": [], "epi": [], "psnr_float": []}
    try:
        for batch in loader:
            x = batch["image"].to(device)
            m = batch["mask"].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                y = model.encode(x)
                x_float = model.decode(y)
                if prior is not None:  # the range codecs: integer rounding, rate from the prior (eval mode)
                    with torch.autocast(device.type, enabled=False):
                        y_hat, likelihoods = prior(y.float())
                        bits_batch = float(rate_bits(likelihoods))
                    x_hat = model.decode(y_hat.to(y.dtype))
                    if range_codec is not None:
                        for lat in y.float().cpu().numpy():
                            coded_bits += 8 * len(range_codec.encode(lat))
                else:
                    x_hat = model.decode(quantize_latent(y, bits)) if bits else x_float
            x_hat, x_float = x_hat.float().clamp(0, 1), x_float.float().clamp(0, 1)
            loss, _ = loss_fn(x_hat, x.float(), m)
            if prior is not None:
                px = x.shape[0] * x.shape[-2] * x.shape[-1]
                total_bits, total_px = total_bits + bits_batch, total_px + px
                loss = rd_loss(loss, bits_batch / px, rate_weight, lmbda)
            losses.append(float(loss))
            weights.append(x.shape[0])
            ref = x.float().cpu().numpy()[:, 0]
            rec = x_hat.cpu().numpy()[:, 0]
            rec_f = x_float.cpu().numpy()[:, 0]
            valid = m.cpu().numpy()[:, 0] > 0.5
            for i in range(ref.shape[0]):
                for k, v in patch_metrics(ref[i], rec[i], valid[i], scaling).items():
                    per[k].append(v)
                per["psnr_float"].append(psnr(ref[i].astype(np.float64), rec_f[i].astype(np.float64),
                                              mask=valid[i]))
    finally:
        model.train(was_training)
    out = {"loss": float(np.average(losses, weights=weights)) if losses else float("nan")}
    out.update({k: (_median if k == "enl_ratio" else _mean)(v) for k, v in per.items()})
    out["bpp"] = total_bits / total_px if total_px else float("nan")
    if range_codec is not None and total_px:
        out["bpp_coded"] = coded_bits / total_px
    out["patches"] = int(sum(weights))
    return out
