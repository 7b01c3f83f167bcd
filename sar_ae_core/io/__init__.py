"""Reading and writing rasters: windows, georeferencing, units, GDAL and .npy readers, the GeoTIFF writer, safe outputs (never an input, atomic, checked) and remote files (HTTP range requests)."""
