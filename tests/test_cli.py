"""The command line: JSON views, the demo on the bundled sample, argument errors."""

import json

import pytest

from sar_ae_core.cli import SAMPLE, main


def test_inspect_info_and_models_as_json(tmp_path, capsys):
    assert main(["inspect", str(SAMPLE), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["units"] == "db" and info["width"] == 512 and len(info["bands"]) == 2
    sarz = tmp_path / "s.sarz"
    assert main(["compress", str(SAMPLE), str(sarz)]) == 0
    capsys.readouterr()
    assert main(["info", str(sarz), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["bytes"] == sarz.stat().st_size and meta["model"] == "sarae-q2"
    assert main(["models", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert {"sarae-q1", "sarae-q2", "sarae-q3", "sarae-q4"} <= set(rows)
    # the counted operations (benchmarks/bench_models.py --update-cards): light decoders within the 2.5 kMAC budget
    assert all(rows[n]["macs"]["decoder_kmac_px"] <= 2.5 for n in ("sarae-q1", "sarae-q2", "sarae-q3"))
    assert rows["sarae-q4"]["macs"]["decoder_kmac_px"] > 2.5


def test_demo_writes_the_main_job(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "learned" in out and "JPEG2000" in out
    assert (tmp_path / "demo" / "maps" / "epi.tif").exists()


def test_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compress"])
    assert e.value.code == 2


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`info FILE | head -1`: the pipe closes under the printing (here before it: `| true` reads nothing); the
    command ends quietly (141, as SIGPIPE) instead of a traceback."""
    import subprocess
    import sys

    sarz = tmp_path / "s.sarz"
    assert main(["compress", str(SAMPLE), str(sarz)]) == 0
    proc = subprocess.run(f"{sys.executable} -m sar_ae_core info {sarz} | true; echo ${{PIPESTATUS[0]}}",
                          shell=True, capture_output=True, text=True, executable="/bin/bash", timeout=120)
    assert proc.stdout.strip() == "141" and proc.stderr == "", proc.stderr


def test_a_raster_inside_a_zip_archive_is_read_where_it_is(tmp_path, spain_db, capsys):
    """Products are often delivered zipped: a GDAL /vsizip/ path compresses like the file itself (the same
    reconstruction), and a member the archive lacks is one line naming it, exit 2, nothing written."""
    import numpy as np
    import rasterio
    import zipfile

    archive = tmp_path / "delivery.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(spain_db, "scene.tif")
    inside = f"/vsizip/{archive}/scene.tif"
    assert main(["compress", inside, str(tmp_path / "z.sarz"), "--quality", "1"]) == 0
    assert main(["compress", str(spain_db), str(tmp_path / "f.sarz"), "--quality", "1"]) == 0
    for name in ("z", "f"):
        assert main(["reconstruct", str(tmp_path / f"{name}.sarz"), str(tmp_path / f"{name}.tif")]) == 0
    with rasterio.open(tmp_path / "z.tif") as a, rasterio.open(tmp_path / "f.tif") as b:
        assert np.array_equal(a.read(), b.read(), equal_nan=True) and a.crs == b.crs and a.transform == b.transform
    capsys.readouterr()
    assert main(["compress", f"/vsizip/{archive}/missing.tif", str(tmp_path / "m.sarz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.tif" in err and "not a readable raster" in err
    assert not (tmp_path / "m.sarz").exists()
