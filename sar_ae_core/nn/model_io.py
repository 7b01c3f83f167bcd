"""Model bundles: one `.pt` file holding the model config, its weights, the scaling parameters it was
trained with, and what is known about it (training data, measured rate/quality), and beside it the ONNX
runtime bundle `name.onnx.zip` (`sar_ae_core.nn.runtime`, written by `python -m training.onnx_export`) that
compress/reconstruct use without torch. Bundled models live in `sar_ae_core/models_bundled/`; any other
bundle is loaded by path. Loading a `.pt` always maps to the CPU first, so a bundle saved on CUDA loads
anywhere. torch is imported only when a `.pt` bundle is loaded or saved."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_config import ModelConfig
from sar_ae_core.nn.runtime import OnnxNets, TorchNets, choose_runtime, read_runtime_bundle, runtime_path
from sar_ae_core.scaling import ScalingParams
from sar_ae_core.coding.tables import EntropyTables

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from sar_ae_core.nn.models import SarAutoencoder

BUNDLE_FORMAT = "sarae-model"
BUNDLE_VERSION = 1
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models_bundled"
from sar_ae_core.defaults import ATTENTION_MODEL, DEFAULT_MODEL, QUALITY_MODELS  # noqa: E402,F401 - defined once
# --quality: rate points from ≈0.2 to ≈1.3 bits per pixel (measured means in each model card)


def weights_sha256(state_dict: "dict[str, torch.Tensor]") -> str:
    """SHA-256 of the weights in a canonical order and dtype (independent of file layout or device)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


@dataclass
class ModelBundle:
    """A loaded model with everything needed to use it on new rasters."""

    name: str
    model: "Optional[SarAutoencoder]"          # the torch model (None when loaded for ONNX Runtime)
    config: ModelConfig
    scaling: ScalingParams
    sha256: str
    path: Optional[str] = None
    info: dict[str, Any] = field(default_factory=dict)
    tables: Optional[EntropyTables] = None     # frozen integer coding tables of the entropy model
    nets: Any = None                           # encode/decode on numpy arrays (runtime.OnnxNets / TorchNets)

    @property
    def runtime(self) -> str:
        """'onnx' or 'torch'."""
        return self.nets.runtime

    def decodes(self, sha_prefix: str) -> bool:
        """Whether this model decodes files written by the model whose SHA-256 starts with `sha_prefix`: itself, or
        a model it declares it shares the encoder and entropy tables with (`info['decodes_sha256']`, e.g. a light
        decoder trained on the frozen latents of an earlier model)."""
        return any(str(s).startswith(sha_prefix) for s in [self.sha256, *self.info.get("decodes_sha256", [])])

    @property
    def downsample_factor(self) -> int:
        return 2 ** self.config.stages

    def to(self, device: "torch.device | str") -> "ModelBundle":
        """Move the torch model to a device (in eval mode); ONNX Runtime bundles stay on the CPU."""
        if self.model is not None:
            self.model.to(device).eval()
            self.nets = TorchNets(self.model, device)
        return self

    @property
    def device(self) -> str:
        """Where the networks run ('cpu', 'cuda:0', ...)."""
        if self.model is None:
            return "cpu"
        return str(next(self.model.parameters()).device)


def select_device(device: str = "auto") -> "torch.device":
    """'auto' → CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' as given (checked)."""
    import torch

    from sar_ae_core.options import device_option

    device = device_option(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SarInputError(None, f"device '{device}' requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SarInputError(None, f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return dev


def save_bundle(path: str | os.PathLike, model: "SarAutoencoder", scaling: ScalingParams, name: str,
                info: Optional[dict] = None, half: bool = True) -> str:
    """Write a bundle atomically; fp16 weights by default (float buffers such as BatchNorm stats included).
    Returns the SHA-256 of the stored weights."""
    import torch

    from sar_ae_core.io.raster import AtomicOutput

    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        # the entropy prior is tiny and its density defines the coding tables: keep it in float32
        state[k] = v.half() if (half and v.is_floating_point() and not k.startswith("entropy.")) else v.clone()
    digest = weights_sha256(state)
    payload = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "name": name,
               "model_config": model.config.to_dict(), "scaling": scaling.to_dict(), "state_dict": state,
               "weights_sha256": digest, "info": dict(info or {})}
    if model.entropy is not None:
        import copy

        prior = copy.deepcopy(model.entropy).cpu().float().eval()
        payload["entropy_tables"] = prior.build_tables().to_dict()
    with AtomicOutput(path, overwrite=True, suffix=".pt") as out:
        torch.save(payload, out.tmp)
    return digest


def bundled_models() -> list[Path]:
    """Paths of the models shipped with the package, sorted by name."""
    return sorted(BUNDLED_DIR.glob("*.pt")) if BUNDLED_DIR.is_dir() else []


def model_card(name: str) -> dict:
    """The JSON card next to a bundled model ({} when there is none)."""
    card = BUNDLED_DIR / f"{name}.json"
    return json.loads(card.read_text(encoding="utf-8")) if card.is_file() else {}


def seen_files(info: dict) -> set[str]:
    """Base names of the raster files a model's weights have seen in training, from its info or card: its own
    training files and those of the models it was started from (`training.lineage_files`)."""
    t = (info or {}).get("training") or {}
    files = list((t.get("files") or {}).get("train") or []) + list(t.get("lineage_files") or [])
    return {os.path.basename(os.fspath(f)) for f in files}


def resolve_model(name_or_path: Optional[str]) -> Path:
    """A bundled model name (e.g. 'sarae-q2') or a path to a bundle file (`.pt`, or its `.onnx.zip`)."""
    name_or_path = os.fspath(name_or_path or DEFAULT_MODEL)
    p = Path(name_or_path)
    if p.suffix in (".pt", ".zip") and p.is_file():
        return p
    candidate = BUNDLED_DIR / f"{name_or_path}.pt"
    if candidate.exists() or runtime_path(candidate).exists():
        return candidate
    names = ", ".join(b.stem for b in bundled_models()) or "none"
    if p.suffix in (".pt", ".zip") or os.sep in name_or_path:
        raise SarInputError(name_or_path, "model file not found")
    raise SarInputError(name_or_path, f"no such model (bundled models: {names}; or give a path to a .pt bundle)")


def load_tagged(path: str | os.PathLike, fmt: str, version: int, what: str) -> dict:
    """torch.load a dict saved by this project (on the CPU, tensors and plain types only) and check its
    format tag and version; errors name the file."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        raise SarInputError(path, f"not a readable {what} ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise SarInputError(path, f"not a {what} of this project (wrong format tag)")
    if int(payload.get("version", 0)) > version:
        raise SarInputError(path, f"{what} version {payload['version']} is newer than this software")
    return payload


def load_bundle(name_or_path: Optional[str] = None, device: "str | torch.device" = "cpu",
                runtime: str = "auto") -> ModelBundle:
    """Load a model bundle (bundled name or path) for `runtime` ('auto': ONNX Runtime on the CPU when the model
    has its runtime bundle and onnxruntime is installed, else torch on `device`, in eval mode, float32)."""
    path = resolve_model(name_or_path)
    pt, zp = (None, path) if path.suffix == ".zip" else (path, runtime_path(path))
    if choose_runtime(runtime, pt, zp, str(device)) == "onnx":
        return _load_runtime_bundle(zp)
    from sar_ae_core.nn.models import build_model

    if isinstance(device, str):
        device = select_device(device)
    payload = load_tagged(path, BUNDLE_FORMAT, BUNDLE_VERSION, "model bundle")
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        scaling = ScalingParams.from_dict(payload["scaling"])
        model = build_model(config)
        state = payload["state_dict"]
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (KeyError, ValueError, RuntimeError) as exc:
        raise SarInputError(path, f"model bundle is inconsistent ({str(exc).splitlines()[0][:160]})") from None
    digest = weights_sha256(state)
    if payload.get("weights_sha256") and payload["weights_sha256"] != digest:
        raise SarInputError(path, "model weights do not match their recorded SHA-256 (file damaged)")
    tables = None
    if config.entropy_model != "none":
        if "entropy_tables" not in payload:
            raise SarInputError(path, "model has an entropy model but no coding tables (re-export it)")
        d = payload["entropy_tables"]
        if d.get("kind") == "hyperprior":
            from sar_ae_core.nn.hyperprior import HyperTables

            tables = HyperTables.from_dict(d)
            tables.prior = model.entropy
        else:
            tables = EntropyTables.from_dict(d)
    model.to(device).eval()
    return ModelBundle(name=payload.get("name", path.stem), model=model, config=config, scaling=scaling,
                       sha256=digest, path=str(path), info=payload.get("info", {}), tables=tables,
                       nets=TorchNets(model, device))


def _load_runtime_bundle(path: Path) -> ModelBundle:
    meta, enc, dec, extra = read_runtime_bundle(path)
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        scaling = ScalingParams.from_dict(meta["scaling"])
        tables = EntropyTables.from_dict(meta["entropy_tables"]) if meta.get("entropy_tables") else None
        sha = str(meta["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SarInputError(path, f"runtime bundle is inconsistent ({str(exc).splitlines()[0][:160]})") from None
    if config.entropy_model != "none" and tables is None:
        raise SarInputError(path, "model has an entropy model but no coding tables (re-export it)")
    name = str(meta.get("name") or path.name.split(".")[0])
    active = None
    if tables is not None and meta.get("active_channels") is not None:
        active = np.nonzero(~tables.inactive())[0]
        if [int(a) for a in meta["active_channels"]] != active.tolist():
            active = None  # exported for other tables: the full networks serve
    nets = OnnxNets(enc, dec, str(path), active=active, modes=None if active is None else tables.modes(),
                    encoder_active=extra.get("encoder_active.onnx"), decoder_active=extra.get("decoder_active.onnx"),
                    core_halo=meta.get("core_halo_cells"))
    return ModelBundle(name=name, model=None, config=config, scaling=scaling, sha256=sha, path=str(path),
                       info=meta.get("info") or {}, tables=tables, nets=nets)


def ready_bundle(model: Optional[str], device: str = "auto", bundle: Optional[ModelBundle] = None,
                 runtime: str = "auto") -> ModelBundle:
    """The given bundle, or the named one loaded for `runtime`, ready on the selected device."""
    if bundle is None:
        bundle = load_bundle(model, device, runtime)
    if bundle.runtime == "torch":
        bundle.to(select_device(str(device)))
    return bundle
