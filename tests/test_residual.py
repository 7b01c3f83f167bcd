"""The residual layer: the source minus the network's reconstruction, quantized and range-coded per tile, so that
quality keeps rising with the rate on any product."""

import numpy as np
import pytest
import rasterio

from sar_ae_core.cli import main
from sar_ae_core.coding import residual as res
from sar_ae_core.io.raster import open_raster
from sar_ae_core.scaling import raw_to_db, valid_mask

from conftest import crop_band1


def _db_of(path):
    with open_raster(path) as r:
        raw = r.read()
        v = valid_mask(raw, r.units, r.nodata)
        return raw_to_db(np.where(v, raw, 1), r.units), v


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float64)


def test_frames_round_trip_within_the_step():
    """Skewed dB speckle (log of exponential intensity) with holes: decoded values are the bin centroids, never
    further than one step from the value, RMSE near step/sqrt(12); a wide tail goes through the escape symbol."""
    rng = np.random.default_rng(3)
    r = 10 * np.log10(rng.exponential(1.0, (200, 256))) + 2.5
    r[5, 7] = 900.0  # far outside any table
    coded = rng.random(r.shape) > 0.2
    for step in (0.05, 0.5, 3.0):
        frame = res.encode_residual(r, coded, step)
        back = res.decode_residual(frame, coded, step)
        err = np.abs(back - r)[coded]
        assert err.max() <= step + 1e-4
        assert np.all(back[~coded] == 0)
        rmse = float(np.sqrt(np.mean(err ** 2)))
        assert rmse <= 0.31 * step
    assert abs(back[5, 7] - 900.0) <= 3.0
    assert res.encode_residual(r, np.zeros_like(coded), 1.0) == b""
    # finer steps cost more: ~1 bit per pixel per halving
    sizes = [len(res.encode_residual(r, coded, s)) for s in (2.0, 1.0, 0.5)]
    per_halving = np.diff(sizes) * 8 / coded.sum()
    assert np.all((per_halving > 0.8) & (per_halving < 1.2))


@pytest.mark.parametrize("damage", ["truncated", "counts", "mode", "missing"])
def test_damaged_frames_are_refused(damage):
    rng = np.random.default_rng(0)
    r = rng.normal(0, 3, (64, 64))
    coded = np.ones(r.shape, bool)
    frame = res.encode_residual(r, coded, 1.0)
    bad = {"truncated": frame[:12], "counts": frame[:4] + bytes([frame[4] ^ 0x05]) + frame[4 + 1:],
           "mode": bytes([7]) + frame[1:], "missing": b""}[damage]
    with pytest.raises(ValueError):
        res.decode_residual(bad, coded, 1.0)


def test_residual_layer_end_to_end(tmp_path, spain_db, tiny_bundle, capsys):
    """compress --residual-step: the error falls to about step/sqrt(12) and below one step everywhere (bright
    targets still within the escapes' 0.05 dB), finer steps cost more bytes; a --window decode equals that window
    of the full decode; the base file's bytes are all still there."""
    db, valid = _db_of(spain_db)
    base, base_rec = tmp_path / "b.sarz", tmp_path / "b.tif"
    assert main(["compress", str(spain_db), str(base), "--model", tiny_bundle]) == 0
    assert main(["reconstruct", str(base), str(base_rec), "--units", "db", "--model", tiny_bundle]) == 0
    base_err = np.sqrt(np.mean((_read(base_rec) - db)[valid] ** 2))
    sizes = {}
    for step in ("2", "0.5"):
        sarz, rec = tmp_path / f"r{step}.sarz", tmp_path / f"r{step}.tif"
        assert main(["compress", str(spain_db), str(sarz), "--model", tiny_bundle, "--residual-step", step]) == 0
        assert f"residual layer: step {step} dB" in capsys.readouterr().out
        assert main(["reconstruct", str(sarz), str(rec), "--units", "db", "--model", tiny_bundle]) == 0
        out = _read(rec)
        err = np.abs(out - db)[valid]
        s = float(step)
        assert err.max() <= s + 1e-3
        assert np.sqrt(np.mean(err ** 2)) <= 0.31 * s < base_err
        sizes[step] = sarz.stat().st_size
    assert sizes["0.5"] > sizes["2"] > base.stat().st_size
    capsys.readouterr()
    assert main(["info", str(tmp_path / "r0.5.sarz")]) == 0
    assert "residual  : layer of step 0.5 dB" in capsys.readouterr().out
    win = tmp_path / "w.tif"
    assert main(["reconstruct", str(tmp_path / "r0.5.sarz"), str(win), "--units", "db", "--model", tiny_bundle,
                 "--window", "100", "200", "300", "250"]) == 0
    np.testing.assert_array_equal(_read(win), _read(tmp_path / "r0.5.tif")[:, 200:450, 100:400])


def test_residual_layer_in_source_units_of_dn_data(tmp_path, kerala_dn, tiny_bundle):
    """uint16 DN amplitude back in its own units: within the step (and the DN rounding), nodata kept."""
    with open_raster(kerala_dn) as r:
        raw = r.read().astype(np.float64)
        valid = valid_mask(raw, r.units, r.nodata)
    sarz, rec = tmp_path / "k.sarz", tmp_path / "k.tif"
    assert main(["compress", str(kerala_dn), str(sarz), "--model", tiny_bundle, "--residual-step", "0.2"]) == 0
    assert main(["reconstruct", str(sarz), str(rec), "--model", tiny_bundle]) == 0
    out = _read(rec)
    assert np.all(out[~valid] == 0)
    rel = np.abs(20 * np.log10(np.maximum(out[valid], 1)) - 20 * np.log10(raw[valid]))
    big = raw[valid] >= 20  # DN rounding dominates below
    assert np.percentile(rel[big], 99) <= 0.2


def test_rate_control_adds_a_residual_layer_at_high_rates(tmp_path, tsx_complex):
    """Single-look SLC at 2 bpp: --rate hits the target within 3 % with a residual layer on a low rate point, and
    the file is closer to the source than the search without one (--no-residual) at the same bytes."""
    db, valid = _db_of(tsx_complex)
    rmse = {}
    for flag in ([], ["--no-residual"]):
        sarz, rec = tmp_path / f"t{len(flag)}.sarz", tmp_path / f"t{len(flag)}.tif"
        assert main(["compress", str(tsx_complex), str(sarz), "--rate", "2", *flag]) == 0
        bpp = sarz.stat().st_size * 8 / db.size
        assert main(["reconstruct", str(sarz), str(rec), "--units", "db"]) == 0
        rmse[bool(flag)] = float(np.sqrt(np.mean((_read(rec) - db)[valid] ** 2)))
        from sar_ae_core.coding.sarz import SarzFile

        with SarzFile(sarz) as f:
            assert (f.residual_step > 0) != bool(flag)
        if not flag:
            assert abs(bpp / 2 - 1) <= 0.03
    assert rmse[False] < 0.8 * rmse[True]


@pytest.mark.parametrize("args, option", [(["--residual-step", "0"], "--residual-step"),
                                          (["--residual-step", "-1"], "--residual-step"),
                                          (["--residual-step", "70"], "--residual-step"),
                                          (["--residual-step", "1", "--rate", "2"], "--residual-step"),
                                          (["--residual-step", "1", "--escape-step", "0"], "--escape-step")])
def test_invalid_residual_options_exit_2(tmp_path, spain_db, tiny_bundle, capsys, args, option):
    out = tmp_path / "x.sarz"
    extra = [] if "--rate" in args else ["--model", tiny_bundle]
    assert main(["compress", str(spain_db), str(out), *extra, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and option in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_damaged_residual_chunk_names_the_file(tmp_path, spain_db, tiny_bundle, capsys):
    """A residual frame whose table is corrupted (CRC repaired, as a hostile file would) is an input error naming
    the file and the tile; nothing is written."""
    from sar_ae_core.coding.container import ContainerReader, ContainerWriter
    from sar_ae_core.coding.sarz import SarzFile, _chunk_id

    sarz = tmp_path / "r.sarz"
    assert main(["compress", str(spain_db), str(sarz), "--model", tiny_bundle, "--residual-step", "1"]) == 0
    with SarzFile(sarz) as f:
        i = _chunk_id(f.plan, f.bands, 0, 0, 0, 1)
    with ContainerReader.open(sarz) as r:
        header, chunks = r.header, [r.chunk(k) for k in range(r.chunk_count)]
    mask_part, frame, rframe = res.split_chunk(chunks[i])
    # the first table's first count (after the mode's own bytes, the table's offset and alphabet size)
    first = {res.MODE_PLAIN: 1, res.MODE_CHECKERBOARD: 2}.get(rframe[0], 3 + rframe[2] + 1 if len(rframe) > 2 else 0)
    pos = first + 2
    chunks[i] = res.encode_chunk(mask_part, frame, rframe[:pos] + bytes([rframe[pos] ^ 0x11]) + rframe[pos + 1:])
    with open(sarz, "wb") as fh:  # the same file with this chunk, every checksum valid
        w = ContainerWriter(fh, header)
        for c in chunks:
            w.add(c)
        w.finish()
    out = tmp_path / "o.tif"
    assert main(["reconstruct", str(sarz), str(out), "--model", tiny_bundle]) == 2
    err = capsys.readouterr().err
    assert "r.sarz" in err and "mask tile (0, 0)" in err
    assert not out.exists()


def test_predictive_modes_where_neighbours_predict():
    """Correlated residuals (oversampled GRD speckle after the network) take a predictive mode — the checkerboard
    (half the pixels predicted from their four decoded neighbours) or the three-phase context mode — for fewer
    bytes at the same error; white speckle keeps the plain mode; all decode within one step, also with holes and
    at tile edges."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(5)
    white = 10 * np.log10(rng.exponential(1.0, (256, 256))) + 2.5
    smooth = uniform_filter(rng.normal(0, 3, (256, 256)), 3) * 3
    coded = rng.random(white.shape) > 0.05
    for r, modes in ((white, {res.MODE_PLAIN}), (smooth, {res.MODE_CHECKERBOARD, res.MODE_CONTEXT})):
        frame = res.encode_residual(r, coded, 0.5)
        assert frame[0] in modes
        back = res.decode_residual(frame, coded, 0.5)
        assert np.abs(back - r)[coded].max() <= 0.5 + 1e-4
    black = res.encode_residual(smooth, coded & res._checkerboard(coded.shape), 0.5)  # no checkerboard second half
    assert black[0] != res.MODE_CHECKERBOARD  # (the context mode predicts the odd rows' black pixels diagonally)
    assert len(res.encode_residual(smooth, coded, 0.5)) < 0.9 * _plain_bytes(smooth, coded, 0.5)


def _without_context_mode(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setattr(res, "CONTEXT_VARIANTS", ())
        return fn()


def _network_residual(tmp_path, raster, model="sarae-q1"):
    """(dB residual, coded) of band 1 of a real raster after a real bundled rate point (no residual layer)."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster

    compress_raster(raster, tmp_path / "n.sarz", model=model, bands=[1], post_filter="off")
    reconstruct_raster(tmp_path / "n.sarz", tmp_path / "n.tif", units="db")
    db, ok = _db_of(raster)
    rec = _read(tmp_path / "n.tif")[0]
    coded = ok[0] & np.isfinite(rec)
    return np.where(coded, db[0] - rec, 0.0), coded


@pytest.mark.parametrize("raster, step, saving", [("kerala_dn", 2.5, 0.02), ("spain_db", 2.2, 0.01)])
def test_context_mode_codes_real_residuals_in_fewer_bytes(tmp_path, request, monkeypatch, raster, step, saving):
    """On what a bundled rate point leaves of real GRD scenes (uncalibrated DN; calibrated dB), the three-phase
    mode — each phase predicted from the decoded ones by per-axis weights and coded with tables chosen by its
    neighbours' magnitudes — makes the layer smaller at the same step, in 256-px tiles as the codec codes it; the
    decoder gives exactly the values the encoder reports, within one step of the residual."""
    r, coded = _network_residual(tmp_path, request.getfixturevalue(raster))
    tiles = [(slice(y, y + 256), slice(x, x + 256)) for y in range(0, r.shape[0], 256) for x in range(0, r.shape[1], 256)]
    new = old = 0
    used = set()
    for t in tiles:
        frame, values = res.encode_residual(r[t], coded[t], step, with_values=True)
        if frame:
            used.add(frame[0])
            back = res.decode_residual(frame, coded[t], step)
            np.testing.assert_array_equal(back[coded[t]], values.astype(np.float32))
            assert np.abs(back - r[t])[coded[t]].max() <= step + 1e-3
        new += len(frame)
        old += len(_without_context_mode(monkeypatch, lambda t=t: res.encode_residual(r[t], coded[t], step)))
    assert res.MODE_CONTEXT in used
    assert new < (1 - saving) * old, (new, old)


@pytest.mark.parametrize("damage", ["layout", "thresholds", "flags", "truncated", "weights"])
def test_damaged_context_frames_are_refused(damage):
    """A context frame that names an unknown layout, decreasing thresholds, class flags the decoded symbols do not
    give, or that is cut short, is refused with ValueError (the codec turns it into exit 2 naming the tile)."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(11)
    r = uniform_filter(rng.normal(0, 3, (64, 64)), 3) * 3
    coded = rng.random(r.shape) > 0.05
    frame, _ = res._encode_context(r / 0.5, coded, (4, 12), 0.0)
    assert np.array_equal(res.decode_residual(frame, coded, 0.5)[coded],
                          res.decode_residual(frame, coded, 0.5)[coded])
    b = bytearray(frame)
    if damage == "layout":
        b[1] = 9
    elif damage == "thresholds":
        b[3], b[4] = 12, 4
    elif damage == "flags":
        b[3 + 2] = 0  # the first phase claims no pixels
    elif damage == "weights":
        b = b[:3 + 2 + 1 + 3]
    else:
        b = b[:len(b) // 2]
    with pytest.raises(ValueError):
        res.decode_residual(bytes(b), coded, 0.5)


def _plain_bytes(r, coded, step):
    import constriction

    from sar_ae_core.coding.tables import join_payload

    g = res._Group(r[coded] / step, 0.0)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(g.idx, res._model(g.counts))
    return 1 + len(g.head) + len(join_payload(enc, [g.escapes]))


def test_batch_refuses_a_fixed_residual_step(tmp_path, spain_db, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(spain_db), "--out", str(out), "--residual-step", "1"]) == 2
    err = capsys.readouterr().err
    assert "--residual-step" in err and "batch" in err
    assert not out.exists() or not any(out.iterdir())


def test_max_rmse_reaches_any_error_with_a_residual_layer(tmp_path, tsx_complex, capsys):
    """No rate point comes within 0.4 dB of single-look SLC (RMSE ~4 dB); with a residual layer --max-rmse-db
    does, measured on the file's own reconstruction, and without one it is exit 2 naming the best reached."""
    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.quality.assess import assess_rasters

    out = tmp_path / "e.sarz"
    assert main(["compress", str(tsx_complex), str(out), "--max-rmse-db", "0.4"]) == 0
    assert "+ residual layer (step" in capsys.readouterr().out
    reconstruct_raster(out, tmp_path / "e.tif", units="db")
    rmse = assess_rasters(tsx_complex, tmp_path / "e.tif")["rmse_db"]
    assert 0.3 < rmse <= 0.4
    assert main(["compress", str(tsx_complex), str(tmp_path / "n.sarz"), "--max-rmse-db", "0.4", "--no-residual"]) == 2
    assert "reach" in capsys.readouterr().err and not (tmp_path / "n.sarz").exists()


def test_encoder_knows_what_the_decoder_reconstructs():
    """encode_residual(with_values=True) returns exactly the values decode_residual gives (every mode): the
    encoder measures its error without decoding."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(9)
    coded = rng.random((256, 200)) > 0.1
    for r in (10 * np.log10(rng.exponential(1.0, coded.shape)), uniform_filter(rng.normal(0, 3, coded.shape), 3) * 3):
        frame, values = res.encode_residual(r, coded, 0.7, with_values=True)
        back = res.decode_residual(frame, coded, 0.7)
        np.testing.assert_array_equal(back[coded], values.astype(np.float32))


def test_a_hint_codes_only_the_mode_that_won():
    """`hint` (the frame kind that won for the tile at a nearby step, what a rate search's later passes give): the
    frame is the one the full search of modes gives when the hint is its winner, and mode 0 or the hinted mode
    otherwise — never a mode that was not asked for; every frame decodes within one step."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(13)
    coded = rng.random((256, 256)) > 0.05
    smooth = uniform_filter(rng.normal(0, 3, coded.shape), 3) * 3
    white = 10 * np.log10(rng.exponential(1.0, coded.shape))
    for r in (smooth, white):
        full = res.encode_residual(r, coded, 0.5)
        assert res.encode_residual(r, coded, 0.5, hint=res.frame_kind(full)) == full
        for hint in ((res.MODE_PLAIN, None), (res.MODE_CHECKERBOARD, None), (res.MODE_CONTEXT, 0)):
            frame = res.encode_residual(r, coded, 0.55, hint=hint)
            assert frame[0] in {res.MODE_PLAIN, hint[0]}
            if frame[0] == res.MODE_CONTEXT:
                assert res.frame_kind(frame) == hint
            assert np.abs(res.decode_residual(frame, coded, 0.55) - r)[coded].max() <= 0.55 + 1e-4
    assert res.frame_kind(b"") is None


def _legacy_checkerboard_frame(r, coded, step):
    """A mode-1 frame as format 3.1–3.2 wrote it (the checkerboard alone, edges predicted like any white pixel)."""
    frame, values = res._encode_checkerboard(r / step, coded, 0.0, res.MODE_CHECKERBOARD_32)
    return frame, values * step


def test_frames_of_format_3_2_still_decode():
    """Files written before format 3.3 (checkerboard mode 1, context layout 0: the tile's edge pixels predicted
    like the others) decode to exactly what their encoder reconstructed; the frames the encoder writes now use
    mode 3 / layout 1, where no edge pixel is predicted."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(17)
    coded = rng.random((96, 80)) > 0.05
    r = uniform_filter(rng.normal(0, 3, coded.shape), 3) * 3
    frame, values = _legacy_checkerboard_frame(r, coded, 0.5)
    np.testing.assert_array_equal(res.decode_residual(frame, coded, 0.5)[coded], values.astype(np.float32))
    frame, values = res._encode_context(r / 0.5, coded, (4, 12), 0.0, layout=0)
    np.testing.assert_array_equal(res.decode_residual(frame, coded, 0.5)[coded], (values * 0.5).astype(np.float32))
    assert frame[1] == 0 and res.CONTEXT_VARIANTS and all(layout == 1 for layout, _ in res.CONTEXT_VARIANTS)
    # the edge pixels of a layout-1 frame are in its first, unpredicted phase; a mode-3 frame codes them black
    edge = res._tile_edge(coded.shape)
    assert (res._phase_mask("P0", coded.shape, 1) & edge).sum() == edge.sum()
    assert not (res._phase_mask("P1", coded.shape, 1) | res._phase_mask("P2", coded.shape, 1))[edge].any()
    assert res._black(coded.shape, res.MODE_CHECKERBOARD)[edge].all()
    assert not res._black(coded.shape, res.MODE_CHECKERBOARD_32)[edge].all()


def test_no_steps_along_the_tile_grid(tmp_path, kerala_dn):
    """What a bundled rate point leaves of the smooth uncalibrated Kerala scene, coded as a residual layer in 256-px
    tiles at the step rate control takes there at 1 bpp: the reconstruction's steps across tile borders are within
    5 % of the source's (relative to the steps everywhere); with the one-sided predictions of format 3.2 (context
    layout 0, checkerboard mode 1) they are not, at nearly the same bytes."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster

    crop = tmp_path / "k.tif"
    crop_band1(kerala_dn, crop, 1024, 768)
    compress_raster(crop, tmp_path / "n.sarz", model="sarae-q1", post_filter="off")
    reconstruct_raster(tmp_path / "n.sarz", tmp_path / "n.tif", units="db")
    db, ok = _db_of(crop)
    net = _read(tmp_path / "n.tif")[0]
    keep = slice(16, 752), slice(16, 1008)  # the scene's zero border left out; tile borders at 256, 512 (, 768)
    r = db[0] - net
    coded = np.ones(r.shape, bool)

    def layer(legacy: bool):
        out, nbytes = np.zeros(r.shape), 0
        for y in range(0, r.shape[0], 256):
            for x in range(0, r.shape[1], 256):
                t = slice(y, y + 256), slice(x, x + 256)
                if legacy:
                    frames = [_legacy_checkerboard_frame(r[t], coded[t], 2.5)[0],
                              res._encode_context(r[t] / 2.5, coded[t], (4, 12), 0.0, layout=0)[0]]
                    frame = min(frames, key=len)
                else:
                    frame = res.encode_residual(r[t], coded[t], 2.5)
                nbytes += len(frame)
                out[t] = res.decode_residual(frame, coded[t], 2.5)
        return net + out, nbytes

    new, new_bytes = layer(False)
    old, old_bytes = layer(True)

    def rel(x):  # the reconstruction's seam statistic over the source's, on the crop's tile grid inside `keep`
        return _seam_at(x[keep], 256 - 16) / _seam_at(db[0][keep], 256 - 16)

    assert abs(rel(new) - 1) <= 0.05, rel(new)
    assert rel(old) > rel(new) + 0.02, (rel(old), rel(new))
    assert new_bytes <= 1.03 * old_bytes


def _seam_at(db, first, tile=256):
    """Mean |step| across the tile borders (between index first − 1 and first, then every `tile`) over the mean
    |step| everywhere (as bench_categories.seam_statistic)."""
    border, every = [], []
    for axis in (0, 1):
        d = np.abs(np.diff(db, axis=axis))
        idx = np.arange(first - 1, db.shape[axis] - 1, tile)
        border.append(d.take(idx, axis=axis).ravel())
        every.append(d.ravel())
    return float(np.concatenate(border).mean() / np.concatenate(every).mean())


def test_shifted_bin_edges_code_skewed_speckle_residuals_closer_at_the_same_bytes(tmp_path, tsx_complex, monkeypatch):
    """dB speckle is skewed (deep nulls below the local mean, a short tail above it): on what `sarae-q1` leaves of
    single-look TerraSAR-X, the encoder's choice of bin edges (residual.SHIFTS, by distortion + λ·bits per group)
    gives a smaller error than the centred bins at the same bytes at medium steps — interpolated on the centred
    bins' own rate-distortion curve — and the decoder, which knows nothing of it, gives the values the encoder
    reports."""
    r, coded = _network_residual(tmp_path, tsx_complex)
    steps = [6.0, 8.0, 10.0, 12.0, 14.0, 16.0]

    def curve():
        pts = []
        for step in steps:
            frame, values = res.encode_residual(r, coded, step, with_values=True)
            back = res.decode_residual(frame, coded, step)
            np.testing.assert_array_equal(back[coded], values.astype(np.float32))
            assert np.abs(back - r)[coded].max() <= step + 1e-3
            pts.append((len(frame), float(np.sqrt(np.mean(np.square(back - r)[coded])))))
        return pts

    shifted = curve()
    with monkeypatch.context() as m:
        m.setattr(res, "SHIFTS", (0.0,))
        centred = curve()
    nb, ne = np.log([p[0] for p in centred]), np.log([p[1] for p in centred])
    order = np.argsort(nb)
    gain_db = [20 / np.log(10) * (np.interp(np.log(b), nb[order], ne[order]) - np.log(e)) for b, e in shifted]
    inside = [g for (b, _), g in zip(shifted, gain_db) if nb.min() <= np.log(b) <= nb.max()]
    assert len(inside) >= 4
    assert min(inside) > -0.01 and max(inside) > 0.1, gain_db
