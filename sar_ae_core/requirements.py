"""The runtime packages the codec needs, defined once (torch-free: the QGIS plugin imports this before it knows
whether torch is there). The plugin's dependency check, its install advice and `pyproject.toml` (checked by a
test) read this list; numpy is left out on purpose: QGIS's own numpy must stay (see ENVIRONMENT notes)."""

#: (module to import, pip requirement) — everything compress/reconstruct/assess with the default model import
RUNTIME = (
    ("torch", "torch==2.13.0"),
    ("rasterio", "rasterio>=1.4,<1.5"),
    ("affine", "affine<3"),
    ("zstandard", "zstandard>=0.22"),
    ("constriction", "constriction>=0.4,<0.6"),
    ("scipy", "scipy"),
    ("pytorch_msssim", "pytorch-msssim>=1.0"),
)

#: what the command line adds (its progress bar)
CLI = (("tqdm", "tqdm"),)


def pip_requirements() -> list[str]:
    """The pip requirement strings of RUNTIME."""
    return [req for _, req in RUNTIME]
