"""Facts shared by the library, the command line, training and the QGIS plugin, defined once.

Torch-free and dependency-free on purpose: the plugin reads these while it cannot yet know whether torch,
rasterio or zstandard import in QGIS's Python."""

#: units of pixel values (scaling.UNITS) and the choices a user has (plus "auto")
UNITS = ("linear", "amplitude", "db", "complex")
UNIT_CHOICES = ("auto",) + UNITS
#: how the dB range of a raster is chosen (scaling.choose_scaling)
SCALING_CHOICES = ("auto", "model", "source")
#: latent codec ids stored in `.sarz` headers (latent_coding.codec_from_params reads them)
CODEC_IDS = ("uniform-zstd", "factorized-range", "factorized-range-active", "factorized-range-adaptive",
             "hyperprior-range")
#: output units of reconstruct
OUTPUT_UNITS = ("source", "db")
#: GeoTIFF compression of reconstruct's output; the first is the default: zstd level 1 (GDAL compresses the blocks
#: on its own threads beside the decoder: no slower than uncompressed in benchmarks/bench_codec.py, ~88 % of the
#: raw size for float dB; GDAL 2.3 or later reads it), deflate (+ predictor, ~80 %, the most widely read), lzw, none
OUTPUT_COMPRESS = ("zstd", "deflate", "lzw", "none")
#: the bundled default model and the bundled model with spatial attention
DEFAULT_MODEL = "sarae-q2"         # entropy-coded, ≈0.5 bpp
ATTENTION_MODEL = "sarae-default"  # res_cbam
#: rate points for --quality 1..4
QUALITY_MODELS = {1: "sarae-q1", 2: "sarae-q2", 3: "sarae-q3", 4: "sarae-q4"}
#: the rate points `--rate` and `--max-rmse-db` search: the presets, and sarae-q4's latents with a light decoder
#: (2.3 kMAC/px, for `--max-decoder-kmac` budgets; where the mirror decoder fits too, the lighter one is skipped)
RATE_POINTS = tuple(QUALITY_MODELS.values()) + ("sarae-q4-light",)
#: stored tile side in pixels, and the least context (pixels) each tile's window gets on every side
TILE = 256
HALO_PIXELS = 32
