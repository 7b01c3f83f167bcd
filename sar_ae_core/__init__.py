"""sar_ae_core: learned compression of SAR rasters with georeferenced reconstruction and SAR quality metrics."""

__version__ = "0.1.0"
