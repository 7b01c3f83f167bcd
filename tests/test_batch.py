"""`batch` on a real Dask `LocalCluster` (2 worker processes, 1 thread each) and real 256² crops of Sentinel-1
rasters: failed inputs are reported and never stop the batch, reruns rewrite nothing, a worker killed mid-batch
costs no output, the way back (`--reconstruct`) decodes like `reconstruct`, usage errors are one line."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import rasterio
from rasterio.windows import Window

pytest.importorskip("distributed")

from distributed import Client, LocalCluster  # noqa: E402

from sar_ae_core.batch import expand_inputs, output_names, run_batch, worker_facts  # noqa: E402
from sar_ae_core.cli import main  # noqa: E402
from sar_ae_core.codec import reconstruct_raster, sarz_info  # noqa: E402
from sar_ae_core.errors import SarInputError  # noqa: E402


def _crop(src, dst, col, row, size=256):
    """A size² window of a real raster as its own GeoTIFF (georeference moved with it)."""
    with rasterio.open(src) as ds:
        w = Window(col, row, min(size, ds.width - col), min(size, ds.height - row))
        data, profile = ds.read(window=w), ds.profile.copy()
        profile.update(width=int(w.width), height=int(w.height), transform=ds.window_transform(w), tiled=False)
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="module")
def rasters(tmp_path_factory, spain_db, camargue_db):
    """4 real rasters (two with the same stem in different folders) and one truncated GeoTIFF."""
    d = tmp_path_factory.mktemp("batch_in")
    (d / "sub").mkdir()
    _crop(spain_db, d / "spain_a.tif", 0, 0)
    _crop(spain_db, d / "spain_b.tif", 256, 256)
    _crop(spain_db, d / "sub" / "spain_a.tif", 256, 0)
    shutil.copyfile(camargue_db, d / "camargue.tif")  # 268 x 217: smaller than a tile in rows
    whole = (d / "spain_b.tif").read_bytes()
    (d / "broken.tif").write_bytes(whole[: len(whole) // 2])
    return d


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            Client(c) as client:
        yield c, client


def _manifest(folder):
    with open(folder / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    doc = json.loads((folder / "manifest.json").read_text())
    assert [r["input"] for r in rows] == [it["input"] for it in doc["items"]]
    return rows, doc


def _stats(folder, suffix):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob(f"*{suffix}")}


def test_inputs_expand_and_names_never_collide(tmp_path, rasters):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two inputs\n{rasters / 'spain_a.tif'}\n\n{os.path.relpath(rasters / 'camargue.tif', tmp_path)}\n")
    got = expand_inputs([str(rasters), str(rasters / "sub" / "*.tif"), f"@{listing}", str(rasters / "x.tif")])
    names = [os.path.relpath(p, rasters) for p in got]
    assert names == ["broken.tif", "camargue.tif", "spain_a.tif", "spain_b.tif", "sub/spain_a.tif", "x.tif"]
    outs = output_names(got, str(tmp_path / "out"), ".sarz")
    base = [os.path.basename(o) for o in outs]
    assert len(set(base)) == len(base) == 6
    assert base[0] == "broken.sarz" and base[1] == "camargue.sarz"
    assert base[2].startswith("spain_a-") and base[4].startswith("spain_a-") and base[2] != base[4]
    assert output_names(got, str(tmp_path / "out"), ".sarz") == outs  # the same on a rerun
    for bad, why in ((str(rasters / "*.npy"), "matches no rasters"), (str(tmp_path), "folder holds no rasters"),
                     (f"@{tmp_path / 'none.txt'}", "cannot read the input list")):
        with pytest.raises(SarInputError, match=why):
            expand_inputs([bad])
    with pytest.raises(SarInputError, match="matches no .sarz files"):
        expand_inputs([str(rasters / "*")], reconstruct=True)


def test_batch_reports_the_broken_input_reruns_skip_and_the_way_back_matches(tmp_path, rasters, cluster, capsys):
    c, client = cluster
    out, rec = tmp_path / "out", tmp_path / "rec"
    args = ["batch", str(rasters), str(rasters / "sub"), "--out", str(out), "--scheduler", c.scheduler_address]
    assert main(args) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(f"failed: {rasters / 'broken.tif'}: ")
    rows, doc = _manifest(out)
    status = {os.path.relpath(r["input"], rasters): r["status"] for r in rows}
    assert status == {"broken.tif": "failed", "camargue.tif": "done", "spain_a.tif": "done", "spain_b.tif": "done",
                      "sub/spain_a.tif": "done"}
    assert doc["summary"] == {"done": 4, "skipped": 0, "failed": 1, "pending": 0}
    broken = next(r for r in rows if r["status"] == "failed")
    assert broken["error"].startswith(str(rasters / "broken.tif")) and "\n" not in broken["error"]
    assert broken["output"] and not os.path.exists(broken["output"])
    for r in rows:
        if r["status"] != "done":
            continue
        info = sarz_info(r["output"])
        with rasterio.open(r["input"]) as ds:
            assert (info["width"], info["height"], info["bands"]) == (ds.width, ds.height, ds.count)
        assert info["source_name"] == os.path.basename(r["input"]) and info["model"] == "sarae-q2"
        assert int(r["bytes"]) == os.path.getsize(r["output"]) and float(r["bpp"]) == pytest.approx(info["bpp"])
        assert 0.1 < info["bpp"] < 2.0
    assert sorted(os.listdir(out)) == sorted([os.path.basename(r["output"]) for r in rows if r["status"] == "done"]
                                             + ["manifest.csv", "manifest.json"])  # no temporary file left
    facts = client.run(worker_facts)
    assert sum(f["tasks"] for f in facts.values()) == 5
    assert all(f["model_loads"] <= 1 for f in facts.values()) and all(f["codec_threads"] == 1 for f in facts.values())
    assert {f["pid"] for f in facts.values()} >= {int(it["worker"].split(":")[1]) for it in doc["items"]
                                                  if it["status"] == "done"}

    before = _stats(out, ".sarz")
    assert main(args) == 2  # the broken input still fails; nothing else is touched
    rows, doc = _manifest(out)
    assert doc["summary"] == {"done": 0, "skipped": 4, "failed": 1, "pending": 0}
    assert _stats(out, ".sarz") == before
    assert all(f["model_loads"] <= 1 for f in client.run(worker_facts).values())  # the workers kept the model

    # an input changed after its output was made: refused without --overwrite (the old output kept), then replaced
    newer = rasters / "spain_b.tif"
    later = time.time() + 5
    os.utime(newer, (later, later))
    assert main(args) == 2
    capsys.readouterr()
    rows, _ = _manifest(out)
    row = next(r for r in rows if r["input"] == str(newer))
    assert row["status"] == "failed" and "the input is newer" in row["error"] and "--overwrite" in row["error"]
    assert _stats(out, ".sarz") == before
    assert main(args + ["--overwrite"]) == 2
    rows, doc = _manifest(out)
    assert doc["summary"] == {"done": 1, "skipped": 3, "failed": 1, "pending": 0}
    after = _stats(out, ".sarz")
    assert after["spain_b.sarz"][0] != before["spain_b.sarz"][0]  # a new file renamed into place
    assert {k: v for k, v in after.items() if k != "spain_b.sarz"} == \
        {k: v for k, v in before.items() if k != "spain_b.sarz"}

    back = ["batch", "--reconstruct", str(out / "*.sarz"), "--out", str(rec), "--scheduler", c.scheduler_address]
    assert main(back) == 0
    capsys.readouterr()
    rows, doc = _manifest(rec)
    assert doc["summary"] == {"done": 4, "skipped": 0, "failed": 0, "pending": 0}
    reconstruct_raster(out / "spain_b.sarz", tmp_path / "local.tif")
    with rasterio.open(rec / "spain_b.tif") as a, rasterio.open(tmp_path / "local.tif") as b, \
            rasterio.open(rasters / "spain_b.tif") as src:
        assert a.read().tobytes() == b.read().tobytes()
        assert a.transform == src.transform and a.crs == src.crs and a.dtypes == src.dtypes
    tifs = _stats(rec, ".tif")
    assert main(back) == 0
    assert _manifest(rec)[1]["summary"] == {"done": 0, "skipped": 4, "failed": 0, "pending": 0}
    assert _stats(rec, ".tif") == tifs


def test_batch_starts_its_own_local_cluster(tmp_path, rasters, capsys):
    out = tmp_path / "own"
    assert main(["batch", str(rasters / "camargue.tif"), str(rasters / "spain_a.tif"), "--out", str(out),
                 "--workers", "2"]) == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out
    rows, doc = _manifest(out)
    assert doc["workers"] == 2 and [r["status"] for r in rows] == ["done", "done"]
    assert len({it["worker"] for it in doc["items"]}) >= 1
    assert sarz_info(out / "camargue.sarz")["height"] == 217


def test_a_worker_killed_mid_batch_costs_no_output(tmp_path, spain_db, cluster):
    c, client = cluster
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):  # 512² VV+VH: about a second each, long enough to be caught working
        shutil.copyfile(spain_db, src / f"scene_{i}.tif")
    pids = client.run(os.getpid)
    killed = {}

    def kill_when_busy():
        # no Dask client calls from this thread (a second client used beside run_batch's own, from another thread,
        # races on the event loop): the workers are busy once a task's part file appears (2 single-thread workers,
        # 6 tasks of about a second each; a compress writes into a '.postfilter' work folder first)
        out = tmp_path / "out"
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if out.is_dir() and any(".part" in p.name or p.name.endswith(".postfilter") for p in out.iterdir()):
                time.sleep(0.3)  # inside the task
                addr, pid = next(iter(pids.items()))
                os.kill(pid, signal.SIGKILL)
                killed[addr] = pid
            time.sleep(0.02)

    t = threading.Thread(target=kill_when_busy, daemon=True)
    t.start()
    r = run_batch([str(src)], tmp_path / "out", scheduler=c.scheduler_address, progress=False)
    t.join(5)
    assert killed, "no worker was caught processing"
    pid = next(iter(killed.values()))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert r["counts"] == {"done": 6, "skipped": 0, "failed": 0}
    for it in r["items"]:
        info = sarz_info(it["output"])
        assert info["bytes"] == os.path.getsize(it["output"]) and info["width"] == 512
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == sorted([f"scene_{i}.sarz" for i in range(6)] + ["manifest.csv", "manifest.json"])
    # the same coded tiles in every file (only the source name in the header differs): the kill changed nothing
    from sar_ae_core.coding.container import ContainerReader

    def chunks(path):
        with ContainerReader.open(path) as r:
            return [r.chunk(i) for i in range(r.chunk_count)]

    first = chunks(tmp_path / "out" / "scene_0.sarz")
    assert len(first) == 2 * 2 * 2 * 2 and all(chunks(tmp_path / "out" / f"scene_{i}.sarz") == first for i in range(6))
    client.wait_for_workers(2, timeout=120)  # the nanny brought a new worker up


@pytest.mark.parametrize("extra, expect", [
    (["--workers", "0"], "--workers must be an integer from 1"),
    (["--reconstruct", "--rate", "0.5"], "--rate: compress option(s), not for batch --reconstruct"),
    (["--quality", "2", "--rate", "0.5"], "give only one of --model, --quality and --rate"),
    (["--escape-step", "-1"], "--escape-step must be between 0"),
])
def test_usage_errors_are_one_line_and_write_nothing(tmp_path, rasters, capsys, extra, expect):
    out = tmp_path / "out"
    assert main(["batch", str(rasters / "spain_a.tif"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expect in err, err
    assert not out.exists()


@pytest.mark.parametrize("extra, expect", [
    (["--model", "no-such-model"], "no-such-model: no such model"),
    (["--tile", "100"], "--tile must be a multiple of"),
])
def test_option_errors_found_on_the_workers_are_one_line_too(tmp_path, rasters, cluster, capsys, extra, expect):
    c, _ = cluster
    out = tmp_path / "out"
    assert main(["batch", str(rasters / "spain_a.tif"), "--out", str(out), "--scheduler", c.scheduler_address,
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expect in err, err
    assert not out.exists()


def test_bad_inputs_and_out_are_one_line(tmp_path, rasters, capsys):
    (tmp_path / "file").write_text("x")
    for args, expect in (([str(rasters / "*.npy"), "--out", str(tmp_path / "o")], "matches no rasters"),
                         ([str(rasters / "spain_a.tif"), "--out", str(tmp_path / "file")], "--out must be a folder")):
        assert main(["batch", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expect in err, err


def test_the_batch_extra_is_declared_once():
    import tomllib
    from pathlib import Path

    from sar_ae_core.requirements import BATCH

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert extras["optional-dependencies"]["batch"] == [req for _, req in BATCH]
    reqs = (Path(__file__).resolve().parents[1] / "scripts" / "requirements.txt").read_text().split()
    assert all(req in reqs for _, req in BATCH)  # CI installs it


def test_without_dask_batch_says_how_to_install_it(tmp_path, rasters):
    code = ("import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
            "from sar_ae_core.cli import main\n"
            f"sys.exit(main(['batch', {str(rasters / 'spain_a.tif')!r}, '--out', {str(tmp_path / 'o')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "needs Dask distributed" in p.stderr and 'pip install "dask[distributed]==2026.8.0"' in p.stderr
    assert not (tmp_path / "o").exists()
