"""The runtime packages the codec needs, defined once (torch-free: the QGIS plugin imports this before it knows
whether torch is there). The plugin's dependency check, its install advice and `pyproject.toml` (checked by a
test) read this list; numpy is left out on purpose: QGIS's own numpy must stay (see ENVIRONMENT notes)."""

#: (module to import, pip requirement) — everything compress/reconstruct/assess/bit maps with the default model
#: import: the networks run on ONNX Runtime, torch is not needed
RUNTIME = (
    ("onnxruntime", "onnxruntime>=1.17,<2"),
    ("rasterio", "rasterio>=1.4,<1.5"),
    ("affine", "affine<3"),
    ("zstandard", "zstandard>=0.22"),
    ("constriction", "constriction>=0.4,<0.6"),
    ("scipy", "scipy"),
)

#: training, CUDA inference, the attention maps of CBAM models and models without an ONNX export; exporting
#: bundles to ONNX (onnx 1.17 is the newest that works with numpy < 2, see ENVIRONMENT notes)
TRAIN = (
    ("torch", "torch==2.13.0"),
    ("pytorch_msssim", "pytorch-msssim>=1.0"),
    ("onnx", "onnx==1.17.0"),
    ("ml_dtypes", "ml_dtypes==0.4.1"),
)

#: `batch` (archives on Dask distributed): an optional extra, imported only by that command
BATCH = (("distributed", "dask[distributed]==2026.8.0"),)

#: what the command line adds (its progress bar)
CLI = (("tqdm", "tqdm"),)


def pip_requirements() -> list[str]:
    """The pip requirement strings of RUNTIME."""
    return [req for _, req in RUNTIME]
