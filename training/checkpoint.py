"""Training checkpoints (`last.pt`, `best.pt`): everything needed to resume exactly or to export a model.

Checkpoints hold only plain Python types and tensors, so they load with ``weights_only=True``; loading
always maps tensors to the CPU (``map_location="cpu"``), so a checkpoint written on a GPU machine loads
on a CPU-only one.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

import sar_ae_core
from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_io import load_tagged
from sar_ae_core.io.raster import AtomicOutput

CKPT_FORMAT = "sarae-train-checkpoint"
CKPT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def code_version() -> dict[str, Any]:
    """sar_ae_core version and, when the code is a git checkout, its commit and whether it has local changes."""
    info: dict[str, Any] = {"sar_ae_core": sar_ae_core.__version__, "torch": str(torch.__version__),
                            "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) random states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], [int(v) for v in np_state[1]], int(np_state[2]), int(np_state[3]),
                       float(np_state[4])],
             "torch": torch.get_rng_state(), "cuda": None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state saved (CUDA states only where CUDA exists and the counts match)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _as_tuple(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write atomically (temporary file renamed into place: an interrupted save never leaves a broken file)."""
    payload = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **payload}
    with AtomicOutput(path, overwrite=True, suffix=".pt") as out:
        torch.save(payload, out.tmp)


def resolve_checkpoint(path: str | os.PathLike, prefer: str = LAST) -> Path:
    """A checkpoint file, or a run folder (its `prefer` checkpoint, else the other one)."""
    p = Path(path)
    if p.is_dir():
        for name in (prefer, BEST if prefer == LAST else LAST):
            if (p / name).is_file():
                return p / name
        raise SarInputError(p, f"no checkpoint in this folder (expected {LAST} or {BEST})")
    if not p.is_file():
        raise SarInputError(p, "checkpoint not found")
    return p


def load_checkpoint(path: str | os.PathLike, prefer: str = LAST) -> dict[str, Any]:
    """Load a training checkpoint on the CPU, whatever device it was saved from."""
    p = resolve_checkpoint(path, prefer)
    payload = load_tagged(p, CKPT_FORMAT, CKPT_VERSION, "training checkpoint")
    payload["path"] = str(p)
    return payload


def checkpoint_model(payload: dict[str, Any]):
    """Rebuild the SarAutoencoder (CPU, eval mode) and its ScalingParams from a checkpoint."""
    from sar_ae_core.nn.models import build_model
    from sar_ae_core.scaling import ScalingParams

    try:
        model = build_model(payload["model_config"])
        model.load_state_dict(payload["state_dict"])
        scaling = ScalingParams.from_dict(payload["scaling"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise SarInputError(payload.get("path"), f"checkpoint is inconsistent ({str(exc).splitlines()[0][:200]})") \
            from None
    return model.eval(), scaling


def find_run_file(ckpt_path: Optional[str], name: str) -> Optional[Path]:
    """A file that lives beside a checkpoint in its run folder (summary.json, metrics.csv), if present."""
    if not ckpt_path:
        return None
    p = Path(ckpt_path).parent / name
    return p if p.is_file() else None


def load_init(spec: str | os.PathLike) -> dict[str, Any]:
    """Weights to start a run from (`--init-from`): a training checkpoint or run folder (its best.pt), a model
    bundle file, or a bundled model name (e.g. 'sarae-q2'). Returns a checkpoint-like dict with model_config,
    state_dict (float32), scaling, step and path."""
    from sar_ae_core.nn.model_io import BUNDLE_FORMAT, BUNDLE_VERSION, BUNDLED_DIR

    p = Path(spec)
    if not p.exists() and (BUNDLED_DIR / f"{spec}.pt").is_file():
        p = BUNDLED_DIR / f"{spec}.pt"
    if p.is_file():
        try:
            fmt = torch.load(p, map_location="cpu", weights_only=True).get("format")
        except Exception:  # noqa: BLE001 - load_checkpoint below reports the problem with the file name
            fmt = None
        if fmt == BUNDLE_FORMAT:
            b = load_tagged(p, BUNDLE_FORMAT, BUNDLE_VERSION, "model bundle")
            state = {k: v.float() if v.is_floating_point() else v for k, v in b["state_dict"].items()}
            return {"model_config": b["model_config"], "state_dict": state, "scaling": b["scaling"],
                    "step": f"bundle {b.get('name', p.stem)}", "path": str(p), "info": b.get("info") or {}}
    return load_checkpoint(p, prefer=BEST)


def lineage_files(init: dict) -> list[str]:
    """The raster files (base names) the weights of `init` (a `load_init` result) have seen in training: its own
    training files and those of every model it was started from (`lineage_files`, carried from run to run and into
    the bundles). A bundled model's card is read too (cards can carry what an earlier release's bundle lacks)."""
    from sar_ae_core.nn.model_io import BUNDLED_DIR, model_card, seen_files

    if "info" in init:  # a bundle
        seen = seen_files(init["info"])
        p = Path(init["path"])
        if p.parent.resolve() == BUNDLED_DIR.resolve():
            seen |= seen_files(model_card(p.stem))
    else:  # a training checkpoint
        seen = seen_files({"training": {"files": (init.get("data") or {}).get("files"),
                                        "lineage_files": init.get("lineage_files")}})
    return sorted(seen)
