"""Rate control: what cannot be reached is said, and nothing is left but the final file."""

import pytest

from sar_ae_core.errors import SarInputError
from sar_ae_core.rate import compress_to_rate, search_summary


def test_unreachable_target_writes_the_closest_and_says_so(tmp_path, opera_lin):
    """A 100 x 100 crop at 0.1 bpp: its header alone is ~0.2 bpp."""
    out = tmp_path / "o.sarz"
    res = compress_to_rate(opera_lin, out, 0.1)
    assert out.exists() and res["reached"] is False and res["bpp"] > 0.1
    assert "outside what the bundled rate points reach" in search_summary(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.sarz"]  # no pass files left


@pytest.mark.parametrize("target", [0, -1, 40, float("nan")])
def test_invalid_targets(tmp_path, spain_db, target):
    with pytest.raises(SarInputError, match="--rate"):
        compress_to_rate(spain_db, tmp_path / "x.sarz", target)
    assert list(tmp_path.iterdir()) == []
