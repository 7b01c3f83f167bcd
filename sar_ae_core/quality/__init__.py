"""How good a reconstruction is: metrics and per-pixel maps, streamed assessment of two rasters, the JPEG2000 twin, and the bit-allocation and attention maps."""
