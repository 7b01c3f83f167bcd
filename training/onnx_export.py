"""Export a trained model's encoder and decoder to ONNX for the torch-free runtime (`sar_ae_core.nn.runtime`).

The graphs are rewritten for speed without changing what they compute:

* every 5x5 stride-2 transposed convolution becomes the equivalent 3x3 convolution to 4x the channels plus
  PixelShuffle(2) (its four polyphase kernels; the sub-pixel form runs ~2x faster in ONNX Runtime);
* GDN sums its channels with a 1x1 convolution (torch's eval mode sums element-wise in a fixed order because
  its CPU convolutions depend on the thread count; each ONNX Runtime session of the codec runs on one thread);
* weights that float16 holds exactly (the `.pt` bundle's fp16 weights) are stored in float16 and cast to float32
  once when the session is created (constant folding): half the bytes on disk, float32 arithmetic; derived
  constants (e.g. BatchNorm folded into a convolution) stay float32.

The runtime bundle is a zip beside the `.pt` bundle: `model.json` (name, weights SHA-256 of the `.pt`, model
config, scaling, entropy tables, info) + `encoder.onnx` + `decoder.onnx`, and for a model whose entropy tables have
inactive channels (`EntropyTables.inactive`: training collapsed them, they always hold their mode) the two
networks on the active channels alone (`model.json` names them, `active_channels`):

* `encoder_active.onnx`: the last convolution computes the active channels only (the others are the mode by
  definition of the 'factorized-range-active' codec);
* `decoder_active.onnx`: the first convolution reads the active channels only; the constant inactive ones are
  folded into its bias (bias + Σ mode_c · Σ taps W[:, c]); and every convolution is 'valid' (no padding): the
  input is a latent unit with `decoder_halo_cells` cells on each side, the output just its core's pixels — no
  work on the halo pixels the codec would throw away (1.27x the pixels for 256-px units), no zero padding for
  the fold to meet.

Each is checked against the full network on random latents when it is exported.
"""

from __future__ import annotations

import copy
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from sar_ae_core.nn.model_io import ModelBundle, load_bundle
from sar_ae_core.nn.models import GDN, Decoder, LightDecoder, SarAutoencoder, SeparableDecoder
from sar_ae_core.io.output import AtomicOutput
from sar_ae_core.nn.runtime import RUNTIME_FORMAT, RUNTIME_VERSION, runtime_path

OPSET = 17


class SubpixelConvTranspose(nn.Module):
    """ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1) as Conv2d(k=3, padding=1) to 4x the channels
    + PixelShuffle(2): output pixel (2m + a, 2n + b) of channel o is channel 4o + 2a + b of the convolution, whose
    tap (dy, dx) is the transposed kernel's tap (a + 4 − 2dy, b + 4 − 2dx) (zero where that is outside 0..4)."""

    def __init__(self, t: nn.ConvTranspose2d) -> None:
        super().__init__()
        cin, cout = t.in_channels, t.out_channels
        w = t.weight.detach().float()  # (cin, cout, 5, 5)
        w2 = torch.zeros(cout * 4, cin, 3, 3)
        for a in range(2):
            for b in range(2):
                for dy in range(3):
                    for dx in range(3):
                        ky, kx = a + 4 - 2 * dy, b + 4 - 2 * dx
                        if ky < 5 and kx < 5:
                            w2[a * 2 + b::4, :, dy, dx] = w[:, :, ky, kx].t()
        self.conv = nn.Conv2d(cin, cout * 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(w2)
            bias = t.bias.detach().float() if t.bias is not None else torch.zeros(cout)
            self.conv.bias.copy_(bias.repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def _rewritable(m: nn.Module) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (5, 5) and m.stride == (2, 2)
            and m.padding == (2, 2) and m.output_padding == (1, 1) and m.groups == 1 and m.dilation == (1, 1))


def _rewrite(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        if _rewritable(child):
            setattr(module, name, SubpixelConvTranspose(child))
        else:
            _rewrite(child)
    return module


class _Encode(nn.Module):
    def __init__(self, ae: SarAutoencoder) -> None:
        super().__init__()
        self.encoder = ae.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class _Decode(nn.Module):
    def __init__(self, ae: SarAutoencoder) -> None:
        super().__init__()
        self.decoder = ae.decoder

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(y).clamp(0.0, 1.0)


def _prepared(model: SarAutoencoder) -> SarAutoencoder:
    """A float32 CPU copy in eval mode with the export rewrites (sub-pixel convolutions, GDN as a convolution)."""
    ae = _rewrite(copy.deepcopy(model).cpu().float().eval())
    for m in ae.modules():
        if isinstance(m, GDN):
            m.fixed_order = False
    return ae


def export_networks(model: SarAutoencoder) -> tuple[bytes, bytes]:
    """(encoder, decoder) ONNX bytes of a model: dynamic batch, height and width; float32 in and out."""
    ae = _prepared(model)
    f, c = ae.downsample_factor, ae.config
    return (_onnx(_Encode(ae), (1, c.in_channels, 4 * f, 4 * f), ("image", "latent")),
            _onnx(_Decode(ae), (1, c.latent_channels, 4, 4), ("latent", "image")))


def _bare(seq: nn.Module) -> bool:
    return isinstance(seq, nn.Sequential) and len(seq) == 0


def _onnx(net: nn.Module, shape: tuple, names: tuple[str, str]) -> bytes:
    buf = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(net, torch.rand(shape), buf, input_names=[names[0]], output_names=[names[1]],
                          dynamic_axes={names[0]: axes, names[1]: axes}, opset_version=OPSET, dynamo=False)
    return _half_weights(buf.getvalue())


_POINTWISE = (nn.LeakyReLU, nn.ReLU, nn.Identity, GDN)


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The decoder's layers in forward order, when it is a plain chain (Sequential, sub-pixel convolutions)."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    if isinstance(module, SubpixelConvTranspose):
        return [module.conv, module.shuffle]
    return [module]


class _CoreDecode(nn.Module):
    """The decoder as 'valid' convolutions (no padding) on a latent with `halo` cells each side, cut to the
    unit's core: no work on pixels that are thrown away, no zero padding anywhere."""

    def __init__(self, leaves: list[nn.Module], crop: int) -> None:
        super().__init__()
        self.leaves = nn.Sequential(*leaves)
        self.crop = crop

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = self.leaves(y)
        if self.crop:
            x = x[..., self.crop:-self.crop, self.crop:-self.crop]
        return x.clamp(0.0, 1.0)


def _core_leaves(decoder: nn.Module, halo: int) -> tuple[list[nn.Module], int]:
    """(the decoder's layers with valid convolutions, pixels to cut at the end) for a latent with `halo` cells each
    side; ValueError when the decoder is not a chain of odd stride-1 convolutions, PixelShuffle and pointwise
    layers, or its receptive field exceeds the halo."""
    if not isinstance(decoder, (LightDecoder, Decoder)) or not _bare(getattr(decoder, "bottleneck", nn.Sequential())):
        raise ValueError("not a chain decoder")
    leaves = []
    for m in _leaves(copy.deepcopy(decoder.levels)):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0]
            if m.kernel_size != (k, k) or k % 2 == 0 or m.stride != (1, 1) or m.padding != (k // 2, k // 2) \
                    or m.dilation != (1, 1) or m.groups != 1:
                raise ValueError("a convolution that is not odd, stride 1 and 'same'")
            m.padding = (0, 0)
        elif not isinstance(m, (nn.PixelShuffle,) + _POINTWISE):
            raise ValueError(f"{type(m).__name__} is not a chain layer")
        leaves.append(m)
    fused = _fuse_tail(leaves)
    for chain in ([fused] if fused is not None else []) + [leaves]:
        left = _halo_left(chain, halo)
        if left is not None:
            return chain, left
    raise ValueError("the receptive field exceeds the halo")


def _halo_left(leaves: list[nn.Module], halo: int) -> Optional[int]:
    """Pixels of halo left after a chain of valid convolutions on `halo` cells each side (None: it runs out)."""
    left = halo
    for m in leaves:
        if isinstance(m, nn.Conv2d):
            left -= m.kernel_size[0] // 2
            if left < 0:
                return None
        elif isinstance(m, nn.PixelShuffle):
            left *= m.upscale_factor
    return left


_ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.Identity)


def _fuse_tail(leaves: list[nn.Module]) -> Optional[list[nn.Module]]:
    """A chain ending PixelShuffle(2), elementwise layers, a 3x3 convolution, PixelShuffle(2) ends instead with the
    elementwise layers, the equivalent 3x3 convolution at the lower resolution (4x the output channels, one per
    phase) and PixelShuffle(4): the same values without the half-resolution tensor and its two shuffles (in ONNX
    Runtime a shuffle costs as much as the convolution). Needs one more pixel of halo at the lower resolution.
    None when the chain does not end so."""
    n = len(leaves)
    if n < 3 or not isinstance(leaves[-1], nn.PixelShuffle) or leaves[-1].upscale_factor != 2 or \
            not isinstance(leaves[-2], nn.Conv2d) or leaves[-2].kernel_size != (3, 3):
        return None
    j = n - 3
    while j >= 0 and isinstance(leaves[j], _ELEMENTWISE):
        j -= 1
    if j < 0 or not isinstance(leaves[j], nn.PixelShuffle) or leaves[j].upscale_factor != 2:
        return None
    conv = leaves[-2]
    w, b = conv.weight.detach(), conv.bias.detach()
    cout, cin = w.shape[:2]
    out_c = cout // 4
    fused = nn.Conv2d(cin * 4, out_c * 16, 3, padding=0)
    wf = torch.zeros(out_c * 16, cin * 4, 3, 3, dtype=w.dtype)
    bf = torch.zeros(out_c * 16, dtype=b.dtype)
    for co in range(out_c):
        for p2 in range(2):
            for q2 in range(2):
                o = co * 4 + p2 * 2 + q2
                for a in range(2):
                    for bb in range(2):
                        k = co * 16 + (2 * a + p2) * 4 + (2 * bb + q2)
                        bf[k] = b[o]
                        for dy in (-1, 0, 1):
                            di, p = divmod(a + dy, 2)
                            for dx in (-1, 0, 1):
                                dj, q = divmod(bb + dx, 2)
                                wf[k, p * 2 + q::4, di + 1, dj + 1] += w[o, :, dy + 1, dx + 1]
    with torch.no_grad():
        fused.weight.copy_(wf)
        fused.bias.copy_(bf)
    return leaves[:j] + leaves[j + 1:n - 2] + [fused, nn.PixelShuffle(4)]


def export_active_networks(model: SarAutoencoder, active: np.ndarray, modes: np.ndarray,
                           tolerance: float = 1e-4) -> tuple[bytes, bytes]:
    """(encoder, decoder) ONNX bytes on the `active` latent channels only (see the module docstring); `modes`: the
    value of every latent channel when inactive. The decoder takes a latent unit with `decoder_halo_cells` cells
    each side and gives the pixels of its core only. Raises ValueError for a model whose networks do not fit, or
    whose active networks differ from the full ones by more than `tolerance` (on [0, 1] pixels and latents)."""
    from sar_ae_core.nn.model_config import decoder_halo_cells

    ae = _prepared(model)
    c = ae.config
    idx = torch.as_tensor(np.asarray(active, np.int64))
    dead = torch.as_tensor(np.setdiff1d(np.arange(c.latent_channels), active))
    halo = decoder_halo_cells(c)
    enc_last = ae.encoder.levels[-1]
    if not (_bare(ae.encoder.bottleneck) and isinstance(enc_last, nn.Conv2d)) or halo is None:
        raise ValueError(f"{c.variant} models have no active-channel networks")
    if isinstance(ae.decoder, SeparableDecoder):
        # residual blocks are no chain: 'same' convolutions on the whole unit, its halo's pixels cut at the end
        # (an output pixel that the zero padding reaches lies within the halo)
        leaves, crop = list(copy.deepcopy(ae.decoder.levels)), halo * ae.downsample_factor
    else:
        leaves, crop = _core_leaves(ae.decoder, halo)
    first = leaves[0]
    if not isinstance(first, nn.Conv2d) or first.in_channels != c.latent_channels:
        raise ValueError("the decoder does not start with a convolution on the latent")
    full_enc, full_dec = copy.deepcopy(ae.encoder), copy.deepcopy(ae.decoder)
    with torch.no_grad():
        new = nn.Conv2d(enc_last.in_channels, len(idx), enc_last.kernel_size, enc_last.stride, enc_last.padding)
        new.weight.copy_(enc_last.weight[idx])
        new.bias.copy_(enc_last.bias[idx])
        ae.encoder.levels[-1] = new
        m = torch.as_tensor(np.asarray(modes, np.float64))
        w = first.weight.detach().double()
        bias = first.bias.detach().double() + (w[:, dead].sum((2, 3)) * m[dead][None]).sum(1)
        first.weight = nn.Parameter(first.weight.detach()[:, idx].clone())
        first.bias = nn.Parameter(bias.float())
        first.in_channels = len(idx)
        core = _CoreDecode(leaves, crop).eval()
        # check: the active networks give the full ones' values (the encoder's active channels; the decoder's
        # pixels of the core, `halo` cells inside the border)
        # (its own generator: the same inputs whatever the caller's random state)
        f = ae.downsample_factor
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, c.in_channels, 12 * f, 12 * f, generator=gen)
        e_err = (full_enc(x)[:, idx] - ae.encoder(x)).abs().max().item()
        y = torch.randint(-3, 4, (1, c.latent_channels, 12, 14), generator=gen).float()
        y[:, dead] = m[dead].float()[:, None, None]
        k = halo * f
        ref = full_dec(y).clamp(0.0, 1.0)[..., k:-k, k:-k]
        out = core(y[:, idx])
        d_err = (ref - out).abs().max().item() if out.shape == ref.shape else float("inf")
    if e_err > tolerance or d_err > tolerance:
        raise ValueError(f"active-channel networks differ from the full ones (encoder {e_err:.2g}, decoder "
                         f"{d_err:.2g})")
    return (_onnx(_Encode(ae), (1, c.in_channels, 4 * f, 4 * f), ("image", "latent")),
            _onnx(core, (1, len(idx), 2 * halo + 4, 2 * halo + 4), ("latent", "image")))


def _half_weights(onnx_bytes: bytes) -> bytes:
    """Store float32 initializers as float16 followed by a Cast back to float32 (folded at session creation)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load_from_string(onnx_bytes)
    g = m.graph
    keep, casts = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        # only where float16 holds the values exactly (the bundle's fp16 weights); folded BatchNorm and other
        # derived constants stay float32
        if arr.dtype == np.float32 and arr.size > 16 and np.array_equal(arr.astype(np.float16).astype(np.float32),
                                                                         arr):
            half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
            keep.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=init.name + "_cast"))
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def write_runtime_bundle(bundle: ModelBundle, path: Optional[str | os.PathLike] = None,
                         share_encoder_with: Optional[str] = None) -> Path:
    """Write the ONNX runtime bundle of a loaded `.pt` bundle (default: beside it, `<name>.onnx.zip`).
    `share_encoder_with`: the name of a model whose runtime bundle lies beside it; where its encoder networks are
    byte for byte this model's (a decoder trained on its frozen latents), they are left out and named
    (`encoder_from`) instead of stored twice."""
    enc, dec = export_networks(bundle.model)
    extra = {}
    tables = bundle.tables
    if tables is not None and hasattr(tables, "inactive") and tables.inactive().any():
        active = np.nonzero(~tables.inactive())[0]
        try:
            extra["encoder_active.onnx"], extra["decoder_active.onnx"] = export_active_networks(
                bundle.model, active, tables.modes())
        except ValueError:
            active = None  # a variant without them: the full networks serve
    meta = {"format": RUNTIME_FORMAT, "version": RUNTIME_VERSION, "name": bundle.name, "sha256": bundle.sha256,
            "model_config": bundle.config.to_dict(), "scaling": bundle.scaling.to_dict(),
            "entropy_tables": bundle.tables.to_dict() if bundle.tables is not None else None,
            "info": bundle.info, "opset": OPSET}
    if extra:
        from sar_ae_core.nn.model_config import decoder_halo_cells

        meta["active_channels"] = [int(a) for a in active]
        meta["core_halo_cells"] = decoder_halo_cells(bundle.config)
    if bundle.tables is not None and not hasattr(bundle.tables, "offsets"):
        raise ValueError(f"model '{bundle.name}': only factorized entropy models run without torch")
    target = Path(path) if path is not None else runtime_path(Path(bundle.path))
    if share_encoder_with:
        other = target.parent / f"{share_encoder_with}.onnx.zip"
        with zipfile.ZipFile(other) as z:
            theirs = {n: z.read(n) for n in ("encoder.onnx", "encoder_active.onnx") if n in z.namelist()}
            their_sha = json.loads(z.read("model.json"))["sha256"]
        mine = {"encoder.onnx": enc, **{n: extra[n] for n in ("encoder_active.onnx",) if n in extra}}
        if theirs == mine:
            meta["encoder_from"] = {"name": share_encoder_with, "sha256": their_sha}
            enc = None
            extra.pop("encoder_active.onnx", None)
    with AtomicOutput(target, overwrite=True, suffix=".zip") as out:
        with zipfile.ZipFile(out.tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("model.json", json.dumps(meta, indent=1, sort_keys=True))
            if enc is not None:
                z.writestr("encoder.onnx", enc)
            z.writestr("decoder.onnx", dec)
            for name, data in extra.items():
                z.writestr(name, data)
    return target


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m training.onnx_export MODEL...`: write the runtime bundle of each (bundled name or .pt path)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.onnx_export", description=main.__doc__)
    ap.add_argument("models", nargs="+", help="bundled model names or .pt bundle paths")
    args = ap.parse_args(argv)
    for name in args.models:
        target = write_runtime_bundle(load_bundle(name, runtime="torch"))
        print(f"{name}: {target} ({target.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
