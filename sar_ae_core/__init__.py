"""sar_ae_core: learned compression of SAR rasters with georeferenced reconstruction and SAR quality metrics."""

import os as _os

__version__ = "0.1.0"

# Rasters are streamed window by window; GDAL's block cache (default 5 % of RAM) would otherwise grow with
# the raster. 32 MB holds a full tile row of a wide raster; set GDAL_CACHEMAX yourself to override.
_os.environ.setdefault("GDAL_CACHEMAX", "32")
