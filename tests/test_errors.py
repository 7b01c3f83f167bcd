"""The project's input error names the file and the problem in one line."""

from sar_ae_core.errors import SarInputError


def test_message_names_the_file_or_just_the_problem():
    e = SarInputError("/data/a.tif", "band(s) [5] do not exist")
    assert str(e) == "/data/a.tif: band(s) [5] do not exist" and e.path == "/data/a.tif"
    assert str(SarInputError(None, "--tile must be a multiple of 8")) == "--tile must be a multiple of 8"
