"""Inference runtimes of the codec: ONNX Runtime (torch-free, the default on the CPU) or PyTorch (training,
CUDA, models without an ONNX export). Both give the codec the same two calls on numpy arrays:
``encode(x (B, C, H, W) float32 in [0, 1]) -> latent`` and ``decode(latent) -> image in [0, 1]``.

Each ONNX Runtime session runs on one thread and the codec calls it from as many threads as it uses, on
work units whose shapes do not depend on the thread count: the bytes written and the pixels decoded are the
same with 1 or N threads. The integer entropy coding reads only the frozen tables, so a file written with
either runtime decodes with the other (the latent symbols may differ by one where the two runtimes' float
results straddle a rounding boundary; the decoded pixels agree to ~1e-5 of the [0, 1] range).

This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sar_ae_core.errors import SarInputError

RUNTIME_FORMAT = "sarae-runtime"
RUNTIME_VERSION = 1
RUNTIMES = ("auto", "onnx", "torch")
MAX_MEMBER_BYTES = 256 << 20


def runtime_path(pt_path: Path) -> Path:
    """The ONNX runtime bundle beside a `.pt` bundle: `name.pt` → `name.onnx.zip`."""
    return pt_path.with_name(pt_path.stem + ".onnx.zip")


def threads() -> int:
    """Worker threads of the codec: OMP_NUM_THREADS when set, else the CPUs this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def have_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxNets:
    """Encoder and decoder as ONNX Runtime sessions (CPU, one thread each call, all graph optimisations), created
    when first used. With `active` (the latent channels a model's entropy tables leave active) and the networks on
    those channels alone (`training.onnx_export.export_active_networks`), `encode(x, skip=...)` runs the smaller
    encoder when the codec leaves exactly the inactive channels out, and `decode_core(y, halo)` the smaller decoder
    (valid convolutions on a unit with `core_halo` cells each side, giving its core only) when every inactive
    channel of `y` holds its mode."""

    runtime = "onnx"

    def __init__(self, encoder: bytes, decoder: bytes, source: str, active: Optional[np.ndarray] = None,
                 modes: Optional[np.ndarray] = None, encoder_active: Optional[bytes] = None,
                 decoder_active: Optional[bytes] = None, core_halo: Optional[int] = None):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SarInputError(source, "needs onnxruntime (pip install onnxruntime)") from None
        import threading

        self._graphs = {"enc": encoder, "dec": decoder, "enc_active": encoder_active, "dec_active": decoder_active}
        self._sessions: dict = {}
        self._source = source
        self._lock = threading.Lock()
        self.active = None
        self.core_halo = core_halo
        if active is not None and modes is not None and encoder_active and decoder_active and core_halo:
            self.active = np.asarray(active, np.int64)
            self._inactive = np.setdiff1d(np.arange(len(modes)), self.active)
            self._modes = np.asarray(modes, np.float32)
        # a broken bundle fails when it is loaded, not in the middle of a run (the decoder files use is checked)
        self._session("dec" if self.active is None else "dec_active")

    def _session(self, key: str):
        s = self._sessions.get(key)
        if s is not None:
            return s
        import onnxruntime as ort

        with self._lock:
            if key not in self._sessions:
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                so.inter_op_num_threads = 1
                so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                so.log_severity_level = 3
                try:
                    sess = ort.InferenceSession(self._graphs[key], so, providers=["CPUExecutionProvider"])
                except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                    raise SarInputError(self._source, f"ONNX networks cannot be loaded "
                                                      f"({str(exc).splitlines()[0][:160]})") from None
                self._sessions[key] = (sess, sess.get_inputs()[0].name)
        return self._sessions[key]

    def _run(self, key: str, x: np.ndarray) -> np.ndarray:
        sess, name = self._session(key)
        return sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]

    def encode(self, x: np.ndarray, skip: Optional[np.ndarray] = None) -> np.ndarray:
        """Latents (B, C, h, w); with `skip` equal to the inactive channels, those are computed no more (zeros:
        the codec does not code them)."""
        if skip is None or self.active is None or not np.array_equal(np.nonzero(~np.asarray(skip))[0], self.active):
            return self._run("enc", x)
        ya = self._run("enc_active", x)
        y = np.zeros((ya.shape[0], len(self._modes)) + ya.shape[2:], np.float32)
        y[:, self.active] = ya
        return y

    def decode(self, y: np.ndarray) -> np.ndarray:
        """Image (B, 1, H, W) of latents (B, C, h, w)."""
        return self._run("dec", y)

    def decode_core_active(self, y: np.ndarray, halo: int) -> np.ndarray:
        """decode_core of a unit given by its active channels only (`self.active`; the others at their mode)."""
        if halo != self.core_halo or self.active is None:
            raise ValueError("no decoder on the active channels for this halo")
        return self._run("dec_active", y)

    def decode_core(self, y: np.ndarray, halo: int) -> np.ndarray:
        """The pixels of a latent unit's core: its decode without `halo` cells on each side."""
        if halo == self.core_halo and self.active is not None and \
                np.all(y[:, self._inactive] == self._modes[self._inactive, None, None]):
            return self.decode_core_active(y[:, self.active], halo)
        return _core(self._run("dec", y), y, halo)


class TorchNets:
    """A SarAutoencoder on a torch device behind the same numpy calls (inference mode, float32 out)."""

    runtime = "torch"

    def __init__(self, model: Any, device: Any):
        self.model, self.device = model, device

    active = None  # the full networks on every channel (the GPU does not need the smaller ones)

    def encode(self, x: np.ndarray, skip: Optional[np.ndarray] = None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.encode(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)).float().cpu().numpy()

    def decode(self, y: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.decode(torch.from_numpy(np.ascontiguousarray(y)).to(self.device)).float().cpu().numpy()

    def decode_core(self, y: np.ndarray, halo: int) -> np.ndarray:
        return _core(self.decode(y), y, halo)


def _core(x: np.ndarray, y: np.ndarray, halo: int) -> np.ndarray:
    """The core of a decoded unit x (of latent y): without `halo` cells' pixels on each side."""
    k = halo * (x.shape[-1] // y.shape[-1])
    return x[..., k:x.shape[-2] - k, k:x.shape[-1] - k]


#: optional members: the networks on the active latent channels (training.onnx_export)
ACTIVE_MEMBERS = ("encoder_active.onnx", "decoder_active.onnx")


def read_runtime_bundle(path: Path) -> tuple[dict, bytes, bytes, dict]:
    """(metadata, encoder ONNX, decoder ONNX, {optional member: bytes}) of a runtime bundle; errors name the
    file. A bundle whose model shares its encoder with another (a decoder trained on that model's frozen latents)
    may leave its encoder networks out and name that model's runtime bundle beside it (`encoder_from`: name and
    SHA-256), whose encoder networks are then read."""
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: i for i in z.infolist()}
            for name in ("model.json", "decoder.onnx"):
                if name not in members:
                    raise SarInputError(path, f"runtime bundle has no {name}")
            for name in members:
                if members[name].file_size > MAX_MEMBER_BYTES:
                    raise SarInputError(path, f"runtime bundle member {name} is implausibly large")
            meta = json.loads(z.read("model.json").decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("model.json is not an object")
            dec = z.read("decoder.onnx")
            extra = {name: z.read(name) for name in ACTIVE_MEMBERS if name in members}
            if "encoder.onnx" in members:
                enc = z.read("encoder.onnx")
            elif isinstance(meta.get("encoder_from"), dict):
                enc, shared = _shared_encoder(path, meta["encoder_from"])
                extra.update(shared)
            else:
                raise SarInputError(path, "runtime bundle has no encoder.onnx")
    except SarInputError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise SarInputError(path, f"not a readable runtime bundle ({exc})") from None
    if meta.get("format") != RUNTIME_FORMAT:
        raise SarInputError(path, "not a runtime bundle of this project (wrong format tag)")
    if int(meta.get("version", 0)) > RUNTIME_VERSION:
        raise SarInputError(path, f"runtime bundle version {meta['version']} is newer than this software")
    return meta, enc, dec, extra


def _shared_encoder(path: Path, ref: dict) -> tuple[bytes, dict]:
    """The encoder networks of the runtime bundle `ref` names beside `path` (checked by its SHA-256)."""
    name, sha = ref.get("name"), ref.get("sha256")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\") or not isinstance(sha, str):
        raise SarInputError(path, "runtime bundle names a bad encoder_from")
    other = Path(path).parent / f"{name}.onnx.zip"
    if not other.is_file():
        raise SarInputError(path, f"shares the encoder of model '{name}', whose runtime bundle {other.name} is "
                                  "not beside it")
    try:
        with zipfile.ZipFile(other) as z:
            meta = json.loads(z.read("model.json").decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("sha256") != sha:
                raise SarInputError(path, f"shares the encoder of model '{name}' (sha256 {sha[:12]}…), but "
                                          f"{other.name} holds another version of it")
            names = set(z.namelist())
            if "encoder.onnx" not in names:
                raise SarInputError(other, "runtime bundle has no encoder.onnx")
            enc = z.read("encoder.onnx")
            extra = {"encoder_active.onnx": z.read("encoder_active.onnx")} if "encoder_active.onnx" in names else {}
    except SarInputError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise SarInputError(other, f"not a readable runtime bundle ({exc})") from None
    return enc, extra


def choose_runtime(runtime: str, pt_path: Optional[Path], zip_path: Optional[Path], device: str) -> str:
    """'onnx' or 'torch' for a model that has a `.pt` and/or a runtime bundle, on `device`."""
    from sar_ae_core.options import choice_option, device_option

    runtime = choice_option("--runtime", runtime, RUNTIMES)
    device = device_option(device)
    has_zip = zip_path is not None and zip_path.is_file()
    gpu = device not in ("auto", "cpu")
    if runtime == "onnx":
        if not has_zip:
            raise SarInputError(pt_path or zip_path, "has no ONNX runtime bundle (export it with "
                                                     "python -m training.onnx_export)")
        if gpu:
            raise SarInputError(None, f"--runtime onnx runs on the CPU; --device {device} needs --runtime torch")
        return "onnx"
    if runtime == "torch":
        if pt_path is None or not pt_path.is_file():
            raise SarInputError(zip_path, "is an ONNX runtime bundle; --runtime torch needs the .pt bundle")
        if not have_torch():
            raise SarInputError(pt_path, "--runtime torch needs PyTorch (pip install torch)")
        return "torch"
    # auto: ONNX Runtime on the CPU when the model has its export and onnxruntime is installed; torch only for a GPU
    # (torch is imported only when it is needed: the import alone takes seconds)
    if has_zip and have_onnxruntime() and not (gpu or (device == "auto" and _cuda())):
        return "onnx"
    if pt_path is not None and pt_path.is_file() and have_torch():
        return "torch"
    if has_zip:
        raise SarInputError(zip_path, "needs onnxruntime (pip install onnxruntime) or PyTorch")
    raise SarInputError(pt_path, "needs PyTorch (pip install torch): this model has no ONNX runtime bundle")


def _cuda() -> bool:
    """Whether torch sees a CUDA GPU; without an NVIDIA driver torch is not even imported."""
    if not (os.path.exists("/proc/driver/nvidia/version") or os.name == "nt") or not have_torch():
        return False
    import torch

    return torch.cuda.is_available()
