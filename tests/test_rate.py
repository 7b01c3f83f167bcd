"""Rate control: what cannot be reached is said, and nothing is left but the final file."""

from pathlib import Path

import pytest

from sar_ae_core.errors import SarInputError
from sar_ae_core.cli import main
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


def test_max_rmse_db_writes_the_smallest_file_within_the_error(tmp_path, spain_db, capsys):
    """--max-rmse-db: the file's own reconstruction is within the target, and it is smaller than the rate point
    that first met it at its own quantization; an unreachable or invalid target is exit 2 with nothing written."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster
    from sar_ae_core.quality.assess import assess_rasters

    out = tmp_path / "e.sarz"
    assert main(["compress", str(spain_db), str(out), "--max-rmse-db", "1.5"]) == 0
    assert "--max-rmse-db 1.5: RMSE" in capsys.readouterr().out
    reconstruct_raster(out, tmp_path / "e.tif", units="db")
    rmse = assess_rasters(spain_db, tmp_path / "e.tif")["rmse_db"]
    assert rmse <= 1.5
    plain = compress_raster(spain_db, tmp_path / "q2.sarz", model="sarae-q2")  # RMSE ~1.31 dB at gain 1
    assert out.stat().st_size < 0.95 * plain["bytes"]
    assert main(["compress", str(spain_db), str(tmp_path / "x.sarz"), "--max-rmse-db", "0.05", "--no-residual"]) == 2
    assert "reach" in capsys.readouterr().err and not (tmp_path / "x.sarz").exists()
    assert main(["compress", str(spain_db), str(tmp_path / "y.sarz"), "--max-rmse-db", "-1"]) == 2
    assert main(["compress", str(spain_db), str(tmp_path / "y.sarz"), "--max-rmse-db", "1", "--rate", "1"]) == 2
    assert not (tmp_path / "y.sarz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left


def test_decoder_budget_limits_the_rate_points(tmp_path, capsys):
    """W-Slovakia VV at 1 bpp: the search takes sarae-q4 (its 9.2 kMAC/px mirror decoder); with
    --max-decoder-kmac 2.5 only the light decoders (2.3 kMAC/px, counted into the model cards by
    benchmarks/bench_models.py --update-cards) are candidates, and the rate is still met. A budget no rate point
    fits, a bad value, or the option without --rate / --max-rmse-db is exit 2 naming the option, nothing written."""
    from conftest import SAR_DATA

    from sar_ae_core.codec import sarz_info
    from sar_ae_core.defaults import RATE_POINTS
    from sar_ae_core.nn.model_io import model_card

    costs = {n: model_card(n)["macs"]["decoder_kmac_px"] for n in RATE_POINTS}
    assert costs["sarae-q4"] > 2.5 and all(costs[n] <= 2.5 for n in ("sarae-q1", "sarae-q2", "sarae-q3",
                                                                      "sarae-q4-light"))
    src = SAR_DATA / "fullres" / "s1_grd_wslovakia_vv_db.tif"
    free, light = tmp_path / "free.sarz", tmp_path / "light.sarz"
    assert main(["compress", str(src), str(free), "--rate", "1"]) == 0
    assert main(["compress", str(src), str(light), "--rate", "1", "--max-decoder-kmac", "2.5"]) == 0
    assert sarz_info(free)["model"] == "sarae-q4"
    info = sarz_info(light)
    assert costs[info["model"]] <= 2.5 and abs(info["bpp"] - 1) <= 0.03, info
    assert main(["compress", str(src), str(tmp_path / "r.sarz"), "--max-rmse-db", "1.2",
                 "--max-decoder-kmac", "2.5"]) == 0
    assert costs[sarz_info(tmp_path / "r.sarz")["model"]] <= 2.5
    capsys.readouterr()
    for extra, message in ((["--rate", "1", "--max-decoder-kmac", "1"], "the lightest: sarae-q1"),
                           (["--rate", "1", "--max-decoder-kmac", "-3"], "must be a positive number"),
                           (["--max-decoder-kmac", "2.5"], "goes with --rate or --max-rmse-db")):
        out = tmp_path / "bad.sarz"
        assert main(["compress", str(src), str(out), *extra]) == 2
        assert message in capsys.readouterr().err and not out.exists()


def test_escapes_follow_the_rate_unless_given(tmp_path, spain_db, capsys):
    """--rate without escape options: below 0.5 bpp only the pixels outside the dB range are kept (to ±0.5 dB),
    from 0.5 bpp the brightest 0.1 % too (to ±0.05 dB); options given win; nothing is clipped at any rate."""
    import numpy as np
    import rasterio

    from sar_ae_core.codec import reconstruct_raster

    low = compress_to_rate(spain_db, tmp_path / "l.sarz", 0.25)
    high = compress_to_rate(spain_db, tmp_path / "h.sarz", 0.6)
    given = compress_to_rate(spain_db, tmp_path / "g.sarz", 0.25, escape_step_db=0.1, keep_brightest=0.1)
    assert (low["escape_step_db"], low["keep_brightest"]) == (1.0, 0.0)
    assert (high["escape_step_db"], high["keep_brightest"]) == (0.1, 0.1)
    assert (given["escape_step_db"], given["keep_brightest"]) == (0.1, 0.1)
    assert high["escaped_pixels"] == given["escaped_pixels"] > low["escaped_pixels"] > 0
    with rasterio.open(spain_db) as ds:
        src = ds.read().astype(np.float64)
    top = np.unravel_index(np.nanargmax(src), src.shape)
    assert src[top] > 20  # +25.6 dB, far above the model's range (8 dB)
    for name, half_step in (("l", 0.5), ("h", 0.05)):
        reconstruct_raster(tmp_path / f"{name}.sarz", tmp_path / f"{name}.tif", units="db")
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            rec = ds.read().astype(np.float64)
        assert abs(rec[top] - src[top]) <= half_step + 1e-3  # not clipped
    assert main(["compress", str(spain_db), str(tmp_path / "c.sarz"), "--rate", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "outside the range, to ±0.5 dB (nothing clipped)" in out and "brightest" not in out


def test_uncalibrated_rasters_at_high_rates_also_try_the_fitted_range(tmp_path, kerala_dn, spain_db):
    """From 1 bpp, a raster whose auto range is the model's shifted onto it (uncalibrated DN) is also searched in
    the range fitted on it, and the file closer to the source is kept: never farther than the shifted search
    alone, at the same target; a calibrated raster is searched once."""
    from sar_ae_core.rate import _rmse_db

    both = compress_to_rate(kerala_dn, tmp_path / "b.sarz", 1.0)
    alone = compress_to_rate(kerala_dn, tmp_path / "a.sarz", 1.0, fitted_window=False)
    assert alone["scaling_kind"] == "shifted" and both["scaling_kind"] in ("shifted", "fitted")
    assert len(both["passes"]) > len(alone["passes"]) and both["reached"] and alone["reached"]
    work = tmp_path / "w"
    work.mkdir()
    assert _rmse_db(kerala_dn, str(tmp_path / "b.sarz"), str(work)) <= \
        _rmse_db(kerala_dn, str(tmp_path / "a.sarz"), str(work))
    low = compress_to_rate(kerala_dn, tmp_path / "l.sarz", 0.5)
    assert low["scaling_kind"] == "shifted"  # below 1 bpp the shifted range only
    cal = compress_to_rate(spain_db, tmp_path / "c.sarz", 1.0)
    ref = compress_to_rate(spain_db, tmp_path / "r.sarz", 1.0, fitted_window=False)
    assert cal["scaling_kind"] == "model" and len(cal["passes"]) == len(ref["passes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sarz", "b.sarz", "c.sarz", "l.sarz", "r.sarz", "w"]


def test_the_neighbouring_rate_point_is_measured_too(tmp_path, sar_data):
    """A coarser gain on the higher rate point or a finer one on the lower: both are searched to the target and
    the file closer to the source is kept (on this RTC scene at 0.25 bpp, without a residual layer, the higher point
    at gain ~0.44 is 0.07 dB closer than the lower one at ~1.6, which the rule alone picks). With the layer, the
    search keeps a file at least as close as both."""
    from sar_ae_core.rate import _rmse_db

    src = sar_data / "fullres" / "s1_whu_t113_20171021_vh_hill_lin.tif"
    both = compress_to_rate(src, tmp_path / "b.sarz", 0.25, residual=False)
    alone = compress_to_rate(src, tmp_path / "a.sarz", 0.25, neighbour=False, residual=False)
    assert both["reached"] and alone["reached"]
    assert {p["model"] for p in both["passes"]} >= {"sarae-q1", "sarae-q2"}
    assert len(both["passes"]) > len(alone["passes"])
    work = tmp_path / "w"
    work.mkdir()
    e_both, e_alone = _rmse_db(src, str(tmp_path / "b.sarz"), str(work)), _rmse_db(src, str(tmp_path / "a.sarz"),
                                                                                     str(work))
    assert both["model"] != alone["model"] and e_both < e_alone - 0.01
    layered = compress_to_rate(src, tmp_path / "l.sarz", 0.25)
    assert layered["reached"] and _rmse_db(src, str(tmp_path / "l.sarz"), str(work)) <= e_both + 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sarz", "b.sarz", "l.sarz", "w"]


@pytest.mark.parametrize("search", ["rate", "rmse"])
def test_searches_report_progress_and_stop_on_cancel(tmp_path, spain_db, search):
    """Every pass reports its number and its own progress, fractions never go back; a cancel inside a pass stops
    the search there, with no output and no work folder left."""
    from sar_ae_core.errors import Cancelled
    from sar_ae_core.rate import compress_to_rmse

    def run(out, progress):
        if search == "rate":
            return compress_to_rate(spain_db, out, 0.5, progress=progress)
        return compress_to_rmse(spain_db, out, 1.3, progress=progress)

    seen = []
    r = run(tmp_path / "a.sarz", lambda f, m="": seen.append((f, m)) or True)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] < 1
    label = "--rate 0.5" if search == "rate" else "--max-rmse-db"
    numbers = {int(m.split(": pass ")[1].split(",")[0]) for _, m in seen if ": pass " in m}
    assert all(m.startswith(label) for _, m in seen) and numbers == set(range(1, len(r["passes"]) + 1))
    assert any("tile row" in m for _, m in seen)  # a pass's own progress inside its slot
    assert (search == "rate") == any(": post-filter" in m for _, m in seen)  # the rate search's last step
    calls = []

    def cancel_in_third_pass(f, m=""):
        calls.append(m)
        return not m.startswith(f"{label}: pass 3")

    with pytest.raises(Cancelled):
        run(tmp_path / "b.sarz", cancel_in_third_pass)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sarz"]
    assert not any(m.startswith(f"{label}: pass 4") for m in calls)


def test_max_rmse_db_residual_search_codes_the_context_mode_once(tmp_path):
    """--max-rmse-db's residual step search: its passes code the layer without the context mode (the error depends
    on the step), bracketing the largest step that meets the target by regula falsi; the step found is coded once
    with every mode; the file kept meets the target as assess measures it, and is no larger than the search's own."""
    from conftest import SAR_DATA

    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.quality.assess import assess_rasters
    from sar_ae_core.rate import compress_to_rmse

    src = SAR_DATA / "tsx_slc_merlin_test_256_reim.npy"
    out = tmp_path / "t.sarz"
    res = compress_to_rmse(src, out, 1.0)
    layered = [p for p in res["passes"] if p.get("residual_step_db")]
    assert res["residual_step_db"] and len(layered) >= 3
    bases = {}
    for p in layered:
        bases.setdefault((p["model"], p["gain"]), []).append(p)
    for group in bases.values():
        met = [p for p in group if not p["context"] and p["rmse_db"] <= 1.0]
        assert [p["context"] for p in group] == [False] * (len(group) - bool(met)) + [True] * bool(met)
        assert len(group) <= 8  # regula falsi: the old bisection needed 10 passes here
        if met:
            final = group[-1]
            assert final["residual_step_db"] == pytest.approx(max(p["residual_step_db"] for p in met), rel=1e-4)
    reconstruct_raster(out, tmp_path / "t.tif", units="db")
    assert assess_rasters(src, tmp_path / "t.tif")["rmse_db"] <= 1.0
    chosen = [p for p in layered if abs(p["residual_step_db"] / res["residual_step_db"] - 1) < 1e-4
              and p["model"] == res["model"]]
    assert res["bytes"] * 8 / (256 * 256) <= min(p["bpp"] for p in chosen) + 1e-9


def test_rate_on_a_large_raster_searches_on_a_sample_of_its_tiles(tmp_path, monkeypatch, kerala_dn):
    """--rate on a raster above SAMPLE_FROM_PIXELS: the search runs on a mosaic of SAMPLE_TILES of its tiles (read
    in the source's units: uncalibrated DN here), then the choice is coded on the whole raster and its last parameter
    moved to the target — the file on disk meets the rate as any other, after few passes over the whole raster, and
    its error is that of the search over the whole raster within a few per cent."""
    from sar_ae_core import rate
    from sar_ae_core.codec import sarz_info

    assert rate._sample_tiles(3, 5, 4) == [(0, 0), (1, 3), (1, 1), (2, 4)]
    assert len(set(rate._sample_tiles(16, 16, 48))) == 48 and rate._sample_tiles(2, 2, 9) == \
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    work = tmp_path / "w"
    work.mkdir()
    whole = rate.compress_to_rate(kerala_dn, tmp_path / "whole.sarz", 1.0, post_filter="off")
    monkeypatch.setattr(rate, "SAMPLE_FROM_PIXELS", 200_000)
    monkeypatch.setattr(rate, "SAMPLE_TILES", 6)
    res = rate.compress_to_rate(kerala_dn, tmp_path / "s.sarz", 1.0, post_filter="off")
    assert res["sampled"] == {"tiles": 6, "tile": 256}
    bpp = (tmp_path / "s.sarz").stat().st_size * 8 / (1280 * 837)
    assert res["reached"] and abs(bpp - 1.0) <= 0.02 and bpp == pytest.approx(res["bpp"])
    full = [p for p in res["passes"] if not p.get("sample")]
    assert 1 <= len(full) <= 6 < len(res["passes"])
    info = sarz_info(tmp_path / "s.sarz")
    assert info["source_units"] == "amplitude" and info["width"] == 1280
    e_s = rate._rmse_db(kerala_dn, str(tmp_path / "s.sarz"), str(work))
    e_w = rate._rmse_db(kerala_dn, str(tmp_path / "whole.sarz"), str(work))
    assert e_s <= 1.03 * e_w, (e_s, e_w)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sarz", "w", "whole.sarz"]  # no work folder left
    assert f"on a sample of 6 tiles, {len(full)} on the whole raster" in rate.search_summary(res)


@pytest.mark.parametrize("target", [0.7, 1.6])
def test_max_rmse_db_on_a_large_raster_searches_on_a_sample_and_meets_the_target_on_the_whole(
        tmp_path, monkeypatch, kerala_dn, target):
    """--max-rmse-db above SAMPLE_FROM_PIXELS: the search on a sample of the raster's tiles, then the choice coded on
    the whole raster, measured there and moved (residual step at 0.7 dB, quantization gain at 1.6) until the whole
    raster meets the target: the file written meets it as assess measures it, in no more bytes than a few per cent
    over the search over the whole raster."""
    from sar_ae_core import rate
    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.quality.assess import assess_rasters

    whole = rate.compress_to_rmse(kerala_dn, tmp_path / "whole.sarz", target)
    monkeypatch.setattr(rate, "SAMPLE_FROM_PIXELS", 200_000)
    monkeypatch.setattr(rate, "SAMPLE_TILES", 6)
    res = rate.compress_to_rmse(kerala_dn, tmp_path / "s.sarz", target)
    assert res["sampled"] == {"tiles": 6, "tile": 256}
    assert bool(res.get("residual_step_db")) == (target < 1.0)
    on_whole = [p for p in res["passes"] if not p.get("sample")]
    assert 1 <= len(on_whole) <= 7 < len(res["passes"])
    reconstruct_raster(tmp_path / "s.sarz", tmp_path / "s.tif", units="db")
    assert assess_rasters(kerala_dn, tmp_path / "s.tif")["rmse_db"] <= target
    assert (tmp_path / "s.sarz").stat().st_size <= 1.04 * whole["bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sarz", "s.tif", "whole.sarz"]


def test_a_search_leaves_out_the_excluded_rate_points(tmp_path, spain_db):
    """`exclude_models`: the named rate points are no candidates (an evaluation leaves out the models trained on the
    scene: `benchmarks/bench_rd.models_trained_on` finds them from the model cards)."""
    import sys

    from sar_ae_core.rate import _rate_points, compress_to_rate

    names = [n for n, _ in _rate_points(exclude_models=("sarae-q2",))]
    assert "sarae-q2" not in names and {"sarae-q1", "sarae-q3"} <= set(names)
    r = compress_to_rate(spain_db, tmp_path / "s.sarz", 1.5, exclude_models=("sarae-q1", "sarae-q2", "sarae-q3"),
                         bands=[1])
    assert r["model"] == "sarae-q4" and {p["model"] for p in r["passes"]} == {"sarae-q4"}
    assert abs(r["bpp"] / 1.5 - 1) <= 0.03
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_rd import models_trained_on, split_scenes

    split = str(Path(__file__).resolve().parents[1] / "training" / "splits" / "broad.json")
    flagged = {Path(p).name: m for (p, _), m in zip(split_scenes(split, "test", None, tmp_path),
                                                    models_trained_on(split, "test", None)) if m}
    # the first rate points were trained on a corpus with this scene; every shipped one descends from them
    assert flagged == {"s1_iw_grd_camargue_20170309_desc_vv_db.tif": ("sarae-q1", "sarae-q2", "sarae-q3", "sarae-q4",
                                                                      "sarae-q4-light")}


def test_the_light_decoder_twin_of_the_top_rate_point_serves_a_decoder_budget_only():
    """sarae-q4-light decodes sarae-q4's files (the same encoder and tables, a 2.3 kMAC/px decoder): within
    --max-decoder-kmac 2.5 it is the top rate point; without a budget the mirror decoder decodes the same bytes
    better and the twin is not searched (no passes spent on it)."""
    from sar_ae_core.nn.model_io import load_bundle, model_card
    from sar_ae_core.rate import _rate_points

    free, light = [n for n, _ in _rate_points()], [n for n, _ in _rate_points(2.5)]
    assert free[-1] == "sarae-q4" and "sarae-q4-light" not in free
    assert light[-1] == "sarae-q4-light" and "sarae-q4" not in light
    assert model_card("sarae-q4-light")["macs"]["decoder_kmac_px"] <= 2.5
    assert load_bundle("sarae-q4-light", runtime="torch").decodes(model_card("sarae-q4")["sha256"][:16])
    assert [n for n, _ in _rate_points(exclude_models=("sarae-q4",))][-1] == "sarae-q4-light"


def test_speckle_gets_a_residual_layer_on_a_coarser_gain_of_the_lowest_point(tmp_path, tsx_complex, monkeypatch):
    """Single-look speckle: where the residual layer on the lowest rate point wins, the network's share is smaller
    still at a coarser gain on that point — the search tries it and keeps the file closer to the source (here
    TerraSAR-X SLC at 1 bpp: gain 0.5, ~0.1 dB closer than the layer on gain 1, which is what the search keeps
    without the coarser bases)."""
    import sar_ae_core.rate as rate
    from sar_ae_core.rate import _rmse_db

    work = tmp_path / "w"
    work.mkdir()
    new = compress_to_rate(tsx_complex, tmp_path / "new.sarz", 1.0, post_filter="off")
    monkeypatch.setattr(rate, "RESIDUAL_BASE_GAINS", ())
    old = compress_to_rate(tsx_complex, tmp_path / "old.sarz", 1.0, post_filter="off")
    assert new["reached"] and old["reached"]
    assert old["model"] == new["model"] == "sarae-q1" and old["gain"] == 1.0 and new["gain"] < 1.0
    assert new["residual_step_db"] and old["residual_step_db"]
    assert any(p["gain"] == 0.5 and not p.get("residual_step_db") for p in new["passes"])
    e_new, e_old = (_rmse_db(tsx_complex, str(tmp_path / n), str(work)) for n in ("new.sarz", "old.sarz"))
    assert e_new < e_old - 0.02


def test_files_tied_in_rmse_go_to_the_one_with_the_source_s_edges(tmp_path, sar_data):
    """Two real files of a held-out OPERA RTC chip (`sarae-q1` and `sarae-q2`, each with a residual layer): given as
    tied in RMSE, the search keeps the one whose EPI against the source is higher; 1 % apart, the smaller RMSE."""
    import numpy as np

    from sar_ae_core import rate
    from sar_ae_core.codec import compress_raster, reconstruct_raster
    from sar_ae_core.quality.assess import assess_rasters
    from sar_ae_core.refine import add_residual_layer

    chip = sar_data / "train" / "s1_opera_rtc_t137-292324-iw1_20211119_vv_lin.tif"
    if not chip.exists():
        pytest.skip(f"{chip} not found")
    files, epi = [], []
    for model, step in (("sarae-q1", 4.0), ("sarae-q2", 6.0)):
        base, out = tmp_path / f"{model}_b.sarz", tmp_path / f"{model}.sarz"
        compress_raster(chip, base, model=model, post_filter="off")
        add_residual_layer(base, chip, out, step)
        reconstruct_raster(out, tmp_path / f"{model}.tif", units="db")
        files.append({"model": model, "path": str(out), "rmse_db": 1.5})
        epi.append(assess_rasters(chip, tmp_path / f"{model}.tif")["epi"])
    assert abs(epi[0] - epi[1]) > 1e-3, epi
    sharper = files[int(np.argmax(epi))]
    for first in files:
        assert rate._edges_break_the_tie(first, files, chip, str(tmp_path)) is sharper
    other = files[1 - int(np.argmax(epi))]
    apart = [other, {**sharper, "rmse_db": 1.5 * 1.01}]
    assert rate._edges_break_the_tie(other, apart, chip, str(tmp_path)) is other
