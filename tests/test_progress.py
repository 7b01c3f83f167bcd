"""One progress-and-cancel callback from the core to every front end."""

import pytest

from sar_ae_core.errors import Cancelled
from sar_ae_core.progress import Progress


def test_sub_progress_maps_onto_its_share_and_cancel_raises():
    seen = []
    p = Progress(lambda f, m: seen.append((round(f, 3), m)) or True)
    p.sub(0.5, 1.0).step(0.5, "half of the second half")
    p.step(2.0, "clamped")
    assert seen == [(0.75, "half of the second half"), (1.0, "clamped")]
    stop = Progress(lambda f, m: f < 0.3)
    stop.step(0.2)
    with pytest.raises(Cancelled, match="tile row 4"):
        stop.step(0.4, "tile row 4")
    Progress(None).step(0.5)  # no callback: nothing to report
