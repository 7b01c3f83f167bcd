"""The plugin's Processing algorithms, one per module as in QGIS's own `processing/algs/gdal/`: each is a thin
adapter from QGIS parameters and feedback to one `sar_ae_core` function; what they share (parameters of the
codec, output guards, styling and loading of results, progress and cancel) lives in `base.py`."""

from .assess import AssessAlgorithm
from .attention import AttentionAlgorithm
from .base import ICON_PATH, SarAeAlgorithm, bundled_model_names, rate_points_help  # noqa: F401 - re-exported
from .bit_allocation import BitAllocationAlgorithm
from .compress import CompressAlgorithm
from .compress_review import CompressReviewAlgorithm
from .reconstruct import ReconstructAlgorithm

ALGORITHMS = (CompressAlgorithm, ReconstructAlgorithm, AssessAlgorithm, AttentionAlgorithm, BitAllocationAlgorithm,
              CompressReviewAlgorithm)
