"""Every invalid option value is one line naming the option and exit 2, before any work and with no output."""

import pytest

from sar_ae_core.cli import main


@pytest.mark.parametrize("args, option", [
    (["--tile", "100"], "--tile"), (["--tile", "0"], "--tile"), (["--tile", "8192"], "--tile"),
    (["--codec", "uniform-zstd", "--bits", "0"], "--bits"), (["--bits", "17"], "--bits"),
    (["--batch-size", "0"], "--batch-size"), (["--device", "gpu"], "--device"),
    (["--escape-step", "-0.5"], "--escape-step"), (["--keep-brightest", "-1"], "--keep-brightest"),
    (["--rate", "0"], "--rate"), (["--rate", "nan"], "--rate"),
])
def test_invalid_compress_options(tmp_path, spain_db, capsys, args, option):
    out = tmp_path / "x.sarz"
    assert main(["compress", str(spain_db), str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and option in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, option", [(["--window", "4"], "--window"), (["--window", "1"], "--window"),
                                          (["--block", "0"], "--block")])
def test_invalid_assess_options(tmp_path, spain_db, capsys, args, option):
    assert main(["assess", str(spain_db), str(spain_db), "--maps", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and option in err, err
    assert list(tmp_path.iterdir()) == []


def test_invalid_reconstruct_device(tmp_path, spain_db, capsys):
    sarz = tmp_path / "a.sarz"
    assert main(["compress", str(spain_db), str(sarz), "--rate", "0.3"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", str(sarz), str(tmp_path / "a.tif"), "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err
    assert not (tmp_path / "a.tif").exists()
