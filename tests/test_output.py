"""Nothing the user had is lost: outputs never replace their inputs, failed writes leave nothing, signals clean up."""

import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio

from sar_ae_core.cli import main
from sar_ae_core.errors import SarInputError
from sar_ae_core.io.output import AtomicOutput, check_output_path, discard_pending


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _leftovers(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder) if ".part" in p)


@pytest.fixture
def chip(tmp_path, spain_db):
    """A private copy of a real Sentinel-1 chip (the tests may try to destroy it)."""
    dst = tmp_path / "chip.tif"
    shutil.copyfile(spain_db, dst)
    return dst


@pytest.fixture
def chip_sarz(tmp_path, chip, tiny_bundle):
    out = tmp_path / "chip.sarz"
    assert main(["compress", str(chip), str(out), "--model", tiny_bundle]) == 0
    return out


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "relative path"])
def test_compress_onto_its_own_input_is_refused_and_the_input_kept(tmp_path, chip, tiny_bundle, capsys, how):
    before = _sha(chip)
    target = {"same path": chip, "symlink": tmp_path / "link.sarz", "hard link": tmp_path / "hard.sarz",
              "relative path": os.path.relpath(chip)}[how]
    if how == "symlink":
        os.symlink(chip, target)
    elif how == "hard link":
        os.link(chip, target)
    assert main(["compress", str(chip), str(target), "--model", tiny_bundle, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is an input of this operation" in err
    assert _sha(chip) == before
    assert _leftovers(tmp_path) == []


def test_reconstruct_onto_its_own_sarz_or_model_is_refused(tmp_path, chip_sarz, tiny_bundle, capsys):
    before = _sha(chip_sarz)
    assert main(["reconstruct", str(chip_sarz), str(chip_sarz), "--model", tiny_bundle, "--overwrite"]) == 2
    assert "is an input" in capsys.readouterr().err
    model_copy = tmp_path / "model.pt"
    shutil.copyfile(tiny_bundle, model_copy)
    model_before = _sha(model_copy)
    assert main(["reconstruct", str(chip_sarz), str(model_copy), "--model", str(model_copy), "--overwrite"]) == 2
    assert _sha(chip_sarz) == before and _sha(model_copy) == model_before


def test_assess_maps_and_json_never_replace_the_compared_rasters(tmp_path, chip, capsys):
    before = _sha(chip)
    assert main(["assess", str(chip), str(chip), "--json", str(chip), "--overwrite"]) == 2
    assert "is an input" in capsys.readouterr().err
    maps = tmp_path / "maps"
    maps.mkdir()
    victim = maps / "epi.tif"
    shutil.copyfile(chip, victim)
    assert main(["assess", str(victim), str(chip), "--maps", str(maps), "--overwrite"]) == 2
    assert _sha(chip) == before and _sha(victim) == before


def test_an_existing_folder_as_output_is_refused_before_any_work(tmp_path, chip, tiny_bundle, capsys):
    folder = tmp_path / "out.sarz"
    folder.mkdir()
    t0 = time.perf_counter()
    assert main(["compress", str(chip), str(folder), "--model", tiny_bundle, "--overwrite"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 2.0  # refused up front, not after the work
    assert _leftovers(tmp_path) == [] and list(folder.iterdir()) == []


def _run_limited(args, fsize_bytes):
    """Run the CLI in a child process whose file-size limit (`ulimit -f`) is fsize_bytes."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))

    return subprocess.run([sys.executable, "-m", "sar_ae_core", *args], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)


@pytest.mark.slow
def test_reconstruct_and_compress_under_a_file_size_limit_exit_2_and_leave_nothing(tmp_path, chip, chip_sarz,
                                                                                  tiny_bundle):
    out = tmp_path / "rec.tif"
    proc = _run_limited(["reconstruct", str(chip_sarz), str(out), "--model", tiny_bundle], 20 * 1024)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "could not be written" in lines[0]
    assert not out.exists()
    sarz = tmp_path / "again.sarz"
    proc = _run_limited(["compress", str(chip), str(sarz), "--model", tiny_bundle], 2048)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not be written" in lines[0]
    assert not sarz.exists()
    assert _leftovers(tmp_path) == []
    # the same commands without the limit work: the failure was the limit's
    assert main(["reconstruct", str(chip_sarz), str(out), "--model", tiny_bundle]) == 0
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read(1)).mean() > 0.9


def test_the_read_back_check_refuses_a_geotiff_whose_blocks_did_not_reach_the_disk(tmp_path):
    """GDAL logs some write failures instead of raising them; the writer checks the file's block index before the
    rename: a file whose last blocks are cut off (what a failed flush leaves) is refused, and nothing is
    committed."""
    from sar_ae_core.io.raster import GeoTiffWriter

    good = tmp_path / "good.tif"
    rng = np.random.default_rng(0)
    with GeoTiffWriter(good, 512, 512, 1, "float32") as w:
        w.write(rng.random((1, 512, 512), dtype=np.float32))
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    writer = GeoTiffWriter(tmp_path / "never.tif", 512, 512, 1, "float32")
    writer._verify(str(good))  # a complete file passes
    with pytest.raises(SarInputError, match="could not be written"):
        writer._verify(str(damaged))
    writer._out.discard()
    assert not (tmp_path / "never.tif").exists() and _leftovers(tmp_path) == []


def _win(col, row, width, height):
    from sar_ae_core.io.raster import Window

    return Window(col, row, width, height)


def test_atomic_output_removes_its_temporary_file_on_failure_and_on_discard_pending(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with AtomicOutput(target) as out:
            open(out.tmp, "wb").write(b"half")
            raise RuntimeError("boom")
    assert not target.exists() and _leftovers(tmp_path) == []
    orphan = AtomicOutput(target)  # an interrupt between creation and the owner's with block
    assert os.path.exists(orphan.tmp)
    assert discard_pending() >= 1
    assert not os.path.exists(orphan.tmp)


def test_check_output_path_names_the_problem(tmp_path):
    with pytest.raises(SarInputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "x.tif")
    existing = tmp_path / "e.tif"
    existing.write_bytes(b"1")
    with pytest.raises(SarInputError, match="already exists"):
        check_output_path(existing)
    assert check_output_path(existing, overwrite=True) == str(existing)
    with pytest.raises(SarInputError, match="is an input"):
        check_output_path(tmp_path / "." / "e.tif", True, [existing])


def test_truncated_geotiff_is_a_one_line_error(tmp_path, chip, tiny_bundle, capsys):
    """A valid header with most strips missing: every read (decimated or windowed) is the file's error."""
    bad = tmp_path / "truncated.tif"
    data = chip.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "t.sarz"
    rc = main(["compress", str(bad), str(out), "--model", tiny_bundle])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and str(bad) in err
    assert not out.exists() and _leftovers(tmp_path) == []


def _sigterm_trial(cmd, out, delay):
    proc = subprocess.Popen([sys.executable, "-m", "sar_ae_core", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_at_random_moments_leaves_nothing_partial(tmp_path, chip, chip_sarz, tiny_bundle):
    """SIGTERM (timeout, batch systems) cleans up like Ctrl-C: exit 143 and no output or .part file, or the
    run had already finished (exit 0, complete output)."""
    rng = random.Random(0)
    codes = []
    trials = int(os.environ.get("SARAE_SIGTERM_TRIALS", "4"))  # 20 for the reliability check in the README
    for i in range(trials):
        for kind in ("compress", "reconstruct"):
            out = tmp_path / (f"c{i}.sarz" if kind == "compress" else f"r{i}.tif")
            cmd = (["compress", str(chip), str(out), "--model", tiny_bundle] if kind == "compress"
                   else ["reconstruct", str(chip_sarz), str(out), "--model", tiny_bundle])
            rc, err = _sigterm_trial(cmd, out, 0.1 if i == 0 else rng.uniform(0.1, 2.0))
            codes.append(rc)
            print(kind, i, rc)
            # 143: handled; -15: arrived before Python ran the handler's install (interpreter start-up) or during
            # its shutdown after the work was done — either way nothing partial may be left
            assert rc in (0, 143, -signal.SIGTERM), (kind, i, err)
            assert _leftovers(tmp_path) == []
            if rc == 143:
                assert not out.exists() and "terminated" in err and "Traceback" not in err
            if out.exists():  # whatever exists is complete and valid
                assert main(["info", str(out)] if kind == "compress" else ["inspect", str(out)]) == 0
            else:
                assert rc != 0
    assert 143 in codes


_SIGTERM_IN_SET_NAME = """
import builtins, os, runpy, signal, sys
class Bomb:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in here: Python wraps it in a RuntimeError
        for _ in range(10 ** 7):  # (should it not run within os.kill: a loop's backward jumps run pending handlers)
            pass
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "sar_ae_core.cli":
        builtins.__import__ = real_import
        type("Field", (), {"fitted_on": Bomb()})
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
sys.argv = ["sar_ae_core", "info", sys.argv[1]]
runpy.run_module("sar_ae_core", run_name="__main__")
"""


def test_sigterm_inside_a_class_definition_during_start_up_ends_as_terminated(chip_sarz):
    """A SIGTERM whose handler runs inside a dataclass field's `__set_name__` while the command line is imported
    surfaces as `RuntimeError('Error calling __set_name__ ...')`, not as `Terminated`: it still ends with exit 143
    and one line, no traceback (seen on CI at a random moment of the SIGTERM test above)."""
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_IN_SET_NAME, str(chip_sarz)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip() == "terminated: no output written", proc.stderr


@pytest.fixture
def small_mounts(tmp_path):
    """A 64 kB tmpfs (a disk that fills up) and a read-only tmpfs; skipped where mounting is not allowed."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    mounted = []
    try:
        for path, opts in ((full, "size=64k"), (ro, "ro,size=64k")):
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
            if proc.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:80]})")
            mounted.append(path)
        yield full, ro
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk_and_read_only_folder_exit_2_one_line_nothing_left(small_mounts, chip, chip_sarz, tiny_bundle,
                                                                     capfd):
    full, ro = small_mounts
    big = full / "filler"
    cases = [
        (["reconstruct", str(chip_sarz), str(full / "rec.tif"), "--model", tiny_bundle], full, "No space left"),
        (["compress", str(chip), str(ro / "x.sarz"), "--model", tiny_bundle], ro, "is not writable"),
        (["reconstruct", str(chip_sarz), str(ro / "rec.tif"), "--model", tiny_bundle], ro, "is not writable"),
    ]
    for args, folder, cause in cases:
        capfd.readouterr()
        assert main(args) == 2, args
        err = capfd.readouterr().err.strip()
        assert err.count("\n") == 0 and cause in err and str(folder) in err, err
        assert os.listdir(folder) == [], os.listdir(folder)
    # compress onto a disk that fills up while the .sarz is written (the chip's .sarz is ~17 kB)
    big.write_bytes(b"\0" * (56 * 1024))
    capfd.readouterr()
    assert main(["compress", str(chip), str(full / "x.sarz"), "--model", tiny_bundle]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left" in err, err
    assert os.listdir(full) == ["filler"]
