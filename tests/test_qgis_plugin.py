"""The QGIS plugin in a real headless QGIS on real Sentinel-1 data: provider, the six algorithms through
Processing, styling of the loaded outputs, cancel, the dialog, qgis_process, packaging and install."""

import configparser
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytestmark = pytest.mark.qgis

ROOT = Path(__file__).resolve().parents[1]
PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"
ALGORITHMS = {"sarae:compress", "sarae:reconstruct", "sarae:assess", "sarae:attention", "sarae:bit_allocation",
              "sarae:compress_review"}


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def qgis_app(tmp_path_factory):
    """One headless QgsApplication for the session, with its settings in a temporary folder and the
    plugin's provider registered; never exited (exitQgis with live layers crashes the interpreter)."""
    os.environ["QGIS_CUSTOM_CONFIG_PATH"] = str(tmp_path_factory.mktemp("qgis-config"))
    from osgeo import gdal
    from qgis.core import QgsApplication, QgsProject

    # QGIS's GDAL caches histograms in .aux.xml files beside the rasters: keep the shared data untouched
    gdal.SetConfigOption("GDAL_PAM_ENABLED", "NO")

    app = QgsApplication.instance()
    if app is None:
        app = QgsApplication([], True)
        app.initQgis()
    if PROCESSING_PLUGINS not in sys.path:
        sys.path.append(PROCESSING_PLUGINS)
    from processing.core.Processing import Processing

    Processing.initialize()
    from qgis_plugin.provider import SarAeProvider

    provider = QgsApplication.processingRegistry().providerById("sarae")
    if provider is None:
        provider = SarAeProvider()  # keep the Python object alive: the registry holds only the C++ side
        QgsApplication.processingRegistry().addProvider(provider)
    app.sarae_provider = provider
    yield app
    QgsProject.instance().removeAllMapLayers()


@pytest.fixture(scope="session")
def qapp(qgis_app):
    """pytest-qt's application is the QgsApplication."""
    return qgis_app


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, spain_db):
    """A small res_cbam bundle (attention gates sharpened so the map has contrast) and a plain one."""
    import torch

    from sar_ae_core.nn.model_io import save_bundle
    from sar_ae_core.nn.models import ModelConfig, build_model
    from sar_ae_core.scaling import fit_scaling

    folder = tmp_path_factory.mktemp("models")
    scaling = fit_scaling([spain_db])
    torch.manual_seed(0)
    cbam = build_model(ModelConfig(variant="res_cbam", base_channels=8, latent_channels=16))
    with torch.no_grad():
        for m in cbam.spatial_attention_modules().values():
            m.conv.weight.mul_(200.0)
    save_bundle(folder / "tiny-cbam.pt", cbam, scaling, "tiny-cbam")
    save_bundle(folder / "tiny-plain.pt", build_model(ModelConfig(variant="plain", base_channels=8,
                                                                  latent_channels=16)), scaling, "tiny-plain")
    return {"cbam": str(folder / "tiny-cbam.pt"), "plain": str(folder / "tiny-plain.pt")}


def run_and_load(alg_id, params, feedback=None):
    """processing.runAndLoadResults; returns (results, {layer name: layer} of the layers this run loaded)."""
    import processing
    from qgis.core import QgsProcessingFeedback, QgsProject

    before = set(QgsProject.instance().mapLayers())
    feedback = feedback or QgsProcessingFeedback()
    results = processing.runAndLoadResults(alg_id, params, feedback=feedback)
    loaded = {lay.name(): lay for lid, lay in QgsProject.instance().mapLayers().items() if lid not in before}
    return results, loaded


@pytest.fixture(scope="module")
def source_layer(qgis_app, spain_db):
    """The Sen1Floods11 scene as a project layer shown in gray with a fixed stretch on band 1."""
    from qgis.core import QgsProject, QgsRasterLayer

    from qgis_plugin import styling

    layer = QgsRasterLayer(str(spain_db), "spain")
    assert layer.isValid()
    styling.style_gray(layer, -21.5, -1.5, band=1)
    QgsProject.instance().addMapLayer(layer)
    return layer


@pytest.fixture(scope="module")
def chain(qgis_app, tmp_path_factory, spain_db, tiny_models):
    """compress → reconstruct → assess through Processing, each loading its outputs into the project."""
    from qgis.core import QgsProcessingFeedback

    d = tmp_path_factory.mktemp("chain")
    fb = QgsProcessingFeedback()
    comp, _ = run_and_load("sarae:compress", {"INPUT": str(spain_db), "MODEL_FILE": tiny_models["cbam"],
                                              "OUTPUT": str(d / "scene.sarz")}, fb)
    recon, recon_layers = run_and_load("sarae:reconstruct", {"INPUT": comp["OUTPUT"],
                                                             "MODEL_FILE": tiny_models["cbam"],
                                                             "OUTPUT": str(d / "reconstruction.tif")})
    assess, map_layers = run_and_load("sarae:assess", {
        "REFERENCE": str(spain_db), "INPUT": recon["OUTPUT"], "OUTPUT_HTML": str(d / "report.html"),
        "ERROR_MAP": str(d / "error.tif"), "ENL_MAP": "TEMPORARY_OUTPUT", "EPI_MAP": str(d / "epi.tif")})
    return {"dir": d, "compress": comp, "compress_log": fb.textLog(), "reconstruct": recon,
            "recon_layers": recon_layers, "assess": assess, "map_layers": map_layers}


def same_grid(layer, reference_path):
    """Assert a QGIS layer has the reference raster's CRS, extent and size."""
    with rasterio.open(reference_path) as ref:
        assert layer.crs().authid() == f"EPSG:{ref.crs.to_epsg()}"
        b = ref.bounds
        e = layer.extent()
        np.testing.assert_allclose([e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()],
                                   [b.left, b.bottom, b.right, b.top], rtol=0, atol=1e-9)
        assert (layer.width(), layer.height()) == (ref.width, ref.height)


def ramp_of(renderer):
    """(first color, last color, min, max) of a pseudocolor renderer's shader."""
    fn = renderer.shader().rasterShaderFunction()
    items = fn.colorRampItemList()
    return items[0].color.name(), items[-1].color.name(), fn.minimumValue(), fn.maximumValue()


def style_ramp_ends(name):
    """First and last colors of a ramp of QGIS's default style."""
    from qgis.core import QgsStyle

    ramp = QgsStyle.defaultStyle().colorRamp(name)
    return ramp.color(0.0).name(), ramp.color(1.0).name()


# ------------------------------------------------------------------------------------------------
# Provider
# ------------------------------------------------------------------------------------------------
def test_provider_lists_the_six_algorithms(qgis_app):
    from qgis.core import QgsApplication, QgsProcessingParameterDefinition, QgsProcessingParameterFileDestination

    from qgis_plugin.algorithms import base as algorithms
    from sar_ae_core.nn import model_io
    from sar_ae_core.io import raster

    provider = QgsApplication.processingRegistry().providerById("sarae")
    assert provider is not None and provider.name() == "SAR autoencoder codec"
    assert not provider.icon().isNull()
    assert {a.id() for a in provider.algorithms()} == ALGORITHMS
    for alg in provider.algorithms():
        assert len(alg.shortHelpString()) > 150, alg.id()
        assert alg.group() and alg.groupId()
        for name in ("DEVICE", "TILE", "BATCH_SIZE"):
            p = alg.parameterDefinition(name)
            if p is not None:
                assert p.flags() & QgsProcessingParameterDefinition.FlagAdvanced, (alg.id(), name)
    # the compress help lists every bundled rate point with the rate measured in its model card
    helptext = QgsApplication.processingRegistry().algorithmById("sarae:compress").shortHelpString()
    for q in model_io.QUALITY_MODELS.values():
        bpp = model_io.model_card(q)["measured"]["bpp"]
        assert f"{q}: {bpp:.2f} bits per pixel" in helptext
    out = QgsApplication.processingRegistry().algorithmById("sarae:compress").parameterDefinition("OUTPUT")
    assert isinstance(out, QgsProcessingParameterFileDestination) and "*.sarz" in out.fileFilter()
    # constants the plugin keeps so that it loads without torch must match the core's
    assert algorithms.DEFAULT_MODEL == model_io.DEFAULT_MODEL
    assert algorithms.UNIT_CHOICES == raster.UNIT_CHOICES
    names = algorithms.bundled_model_names()
    assert sorted(names) == sorted(p.stem for p in model_io.bundled_models())
    assert names[0] == model_io.DEFAULT_MODEL and names[-1] == "sarae-default"  # default first, weakest last


# ------------------------------------------------------------------------------------------------
# Algorithms through Processing
# ------------------------------------------------------------------------------------------------
def test_compress_reports_the_measured_rate(chain, spain_db):
    res = chain["compress"]
    sarz = Path(res["OUTPUT"])
    nbytes = sarz.stat().st_size
    assert res["BYTES"] == nbytes
    assert res["BPP"] == pytest.approx(nbytes * 8 / (512 * 512 * 2))
    assert res["COMPRESSION_RATIO"] == pytest.approx(32 / res["BPP"])  # float32 source samples
    assert f"{res['BPP']:.4f} bits per pixel" in chain["compress_log"]


def test_reconstruct_loads_a_gray_layer_on_the_source_grid(chain, spain_db):
    from qgis_plugin import styling

    (name, layer), = chain["recon_layers"].items()
    # named after its source, model and measured rate
    assert name == f"{spain_db.stem} — tiny-cbam, {chain['compress']['BPP']:.2f} bpp"
    assert layer.isValid() and layer.bandCount() == 2
    same_grid(layer, spain_db)
    r = layer.renderer()
    assert r.type() == "singlebandgray" and r.grayBand() == 1
    ce = r.contrastEnhancement()
    lo, hi = styling.cumulative_cut(layer, 1, 0.02, 0.98)  # no source layer: its own 2–98 % stretch
    assert (ce.minimumValue(), ce.maximumValue()) == pytest.approx((lo, hi))
    assert -40 < lo <= hi < 10  # dB, source units (the untrained test model's output is nearly flat)


def test_assess_outputs_metrics_report_and_styled_maps(chain, spain_db):
    from sar_ae_core.quality.assess import assess_rasters

    res = chain["assess"]
    direct = assess_rasters(spain_db, chain["reconstruct"]["OUTPUT"])
    for out, key in (("PSNR", "psnr"), ("SSIM", "ssim"), ("RMSE_DB", "rmse_db"), ("ENL_RATIO", "enl_ratio"),
                     ("EPI", "epi"), ("VALID_FRACTION", "valid_fraction")):
        assert res[out] == pytest.approx(direct[key], rel=1e-9), out
    assert res["VALID_FRACTION"] == 1.0
    html = Path(res["OUTPUT_HTML"]).read_text(encoding="utf-8")
    assert "PSNR" in html and f"{direct['psnr']:.2f}" in html and "band 2 VH" in html
    assert not [p for p in chain["dir"].iterdir() if p.name.startswith(".")], "temporary files left behind"

    layers = chain["map_layers"]
    assert set(layers) == {"Absolute error (dB)", "ENL ratio", "Edge preservation (EPI)"}
    for layer in layers.values():
        assert layer.isValid() and layer.renderer().type() == "singlebandpseudocolor"
        same_grid(layer, spain_db)
    err = layers["Absolute error (dB)"]
    p98 = err.dataProvider().cumulativeCut(1, 0.0, 0.98)[1]
    c0, c1, lo, hi = ramp_of(err.renderer())
    assert (c0, c1) == style_ramp_ends("Reds")
    assert (lo, hi) == pytest.approx((0.0, p98)) and hi > 0
    fn = err.renderer().shader().rasterShaderFunction()
    assert fn.legendSettings().suffix() == " dB"
    assert all(item.label.endswith(" dB") for item in fn.colorRampItemList())
    c0, c1, lo, hi = ramp_of(layers["ENL ratio"].renderer())
    assert (c0, c1) == style_ramp_ends("RdBu") and lo <= 0.5 and hi >= 1.5
    assert lo + hi == pytest.approx(2.0)  # symmetric around 1
    items = layers["ENL ratio"].renderer().shader().rasterShaderFunction().colorRampItemList()
    assert items[len(items) // 2].value == pytest.approx(1.0)  # centred on 1
    epi = layers["Edge preservation (EPI)"]
    c0, c1, lo, hi = ramp_of(epi.renderer())
    p2, p98 = epi.dataProvider().cumulativeCut(1, 0.02, 0.98)
    assert (c0, c1) == style_ramp_ends("Viridis") and (lo, hi) == pytest.approx((max(0, p2), min(1, p98)))
    assert 0 <= lo < hi <= 1
    with rasterio.open(res["ENL_MAP"]) as enl, rasterio.open(spain_db) as src:
        e = enl.read(1)
        assert "homogeneous areas only" in enl.descriptions[0]
        assert 0.05 < np.isnan(e).mean() < 0.95  # masked outside homogeneous areas, not everywhere
    with rasterio.open(res["ERROR_MAP"]) as e:
        assert e.tags()["SARAE_MAP"] == "abs_error_db" and e.count == 2


def test_attention_map_is_a_translucent_heat_overlay(qgis_app, tmp_path, spain_db, tiny_models):
    from qgis_plugin import styling

    res, layers = run_and_load("sarae:attention", {"INPUT": str(spain_db), "BAND": 2,
                                                   "MODEL_FILE": tiny_models["cbam"],
                                                   "OUTPUT": str(tmp_path / "attention.tif")})
    layer = layers["Attention"]
    same_grid(layer, spain_db)
    r = layer.renderer()
    assert r.type() == "singlebandpseudocolor" and r.opacity() == pytest.approx(0.6)
    c0, c1, lo, hi = ramp_of(r)
    assert (c0, c1) == style_ramp_ends("Inferno")
    assert (lo, hi) == pytest.approx(styling.cumulative_cut(layer, 1, 0.02, 0.98))
    assert 0.0 <= lo < hi <= 1.0
    with rasterio.open(res["OUTPUT"]) as a:
        assert a.tags()["SARAE_BAND"] == "2"
        assert np.nanmean(a.read(1)) == pytest.approx(res["MEAN"], abs=1e-4)


def test_attention_with_a_plain_model_says_why(qgis_app, tmp_path, spain_db, tiny_models):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    with pytest.raises(QgsProcessingException) as err:
        processing.run("sarae:attention", {"INPUT": str(spain_db), "MODEL_FILE": tiny_models["plain"],
                                           "OUTPUT": str(tmp_path / "attention.tif")}, feedback=QgsProcessingFeedback())
    assert "model 'tiny-plain' (variant plain) has no spatial attention" in str(err.value)
    assert "Traceback" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_a_processing_error_naming_the_file(qgis_app, tmp_path, spain_db, tiny_models):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    with pytest.raises(QgsProcessingException) as err:
        processing.run("sarae:compress", {"INPUT": str(spain_db), "BANDS": "1,5", "MODEL_FILE": tiny_models["cbam"],
                                          "OUTPUT": str(tmp_path / "x.sarz")}, feedback=QgsProcessingFeedback())
    assert str(err.value) == f"{spain_db}: band(s) [5] do not exist (the raster has 2 band(s))"
    assert list(tmp_path.iterdir()) == []


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def loaded_copy(qgis_app, tmp_path, spain_db):
    """A private copy of the Spain scene, loaded in the project as layer 'my scene' (removed afterwards)."""
    import shutil

    from qgis.core import QgsProject, QgsRasterLayer

    path = tmp_path / "my_scene.tif"
    shutil.copyfile(spain_db, path)
    layer = QgsRasterLayer(str(path), "my scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield path, layer
    QgsProject.instance().removeMapLayer(layer.id())


def test_no_output_may_replace_an_input_or_a_loaded_layer(qgis_app, tmp_path, loaded_copy, tiny_models):
    """Lost work is the worst failure: reconstruct/compress/assess onto an input or a loaded layer's file is
    refused before any work, the file stays byte-identical and the layer keeps its name."""
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    path, layer = loaded_copy
    before = _sha256(path)
    sarz = tmp_path / "scene.sarz"
    processing.run("sarae:compress", {"INPUT": str(path), "MODEL_FILE": tiny_models["cbam"], "OUTPUT": str(sarz)},
                   feedback=QgsProcessingFeedback())
    alias = tmp_path / "alias.sarz"
    os.symlink(path, alias)
    attempts = [
        ("sarae:reconstruct", {"INPUT": str(sarz), "MODEL_FILE": tiny_models["cbam"], "OUTPUT": str(path)},
         "file of a layer loaded in the project"),
        ("sarae:compress", {"INPUT": str(path), "MODEL_FILE": tiny_models["cbam"], "OUTPUT": str(alias)},
         "is an input of this algorithm"),  # the same file through a link
        ("sarae:reconstruct", {"INPUT": str(sarz), "MODEL_FILE": tiny_models["cbam"], "OUTPUT": str(sarz)},
         "is an input of this algorithm"),
        ("sarae:assess", {"REFERENCE": str(path), "INPUT": str(path), "ERROR_MAP": str(path),
                          "ENL_MAP": None, "EPI_MAP": None, "OUTPUT_HTML": None}, "is an input of this algorithm"),
        ("sarae:compress_review", {"INPUT": str(path), "MODEL_FILE": tiny_models["cbam"],
                                   "OUTPUT": str(tmp_path / "b.sarz"), "RECONSTRUCTION": str(path)},
         "is an input of this algorithm"),
    ]
    sarz_before = _sha256(sarz)
    for alg, params, message in attempts:
        with pytest.raises(QgsProcessingException) as err:
            processing.run(alg, params, feedback=QgsProcessingFeedback())
        assert message in str(err.value) and "nothing was written" in str(err.value), alg
    assert _sha256(path) == before and _sha256(sarz) == sarz_before
    assert layer.name() == "my scene" and layer.isValid()
    assert not (tmp_path / "b.sarz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.sarz", "my_scene.tif", "scene.sarz"]


def test_compress_default_output_is_kept_beside_the_input(qgis_app, tmp_path, loaded_copy, tiny_models):
    """'[Save to temporary file]' would lose the .sarz when QGIS closes: it goes beside the input, never over
    an existing file."""
    import processing
    from qgis.core import QgsProcessingFeedback

    path, _ = loaded_copy
    fb = QgsProcessingFeedback()
    first = processing.run("sarae:compress", {"INPUT": str(path), "MODEL_FILE": tiny_models["cbam"],
                                              "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=fb)["OUTPUT"]
    assert first == str(tmp_path / "my_scene.sarz") and Path(first).stat().st_size > 1000
    assert "beside the input" in fb.textLog()
    first_sha = _sha256(first)
    second = processing.run("sarae:compress", {"INPUT": str(path), "MODEL_FILE": tiny_models["cbam"],
                                               "OUTPUT": "TEMPORARY_OUTPUT"},
                            feedback=QgsProcessingFeedback())["OUTPUT"]
    assert second == str(tmp_path / "my_scene_2.sarz") and _sha256(first) == first_sha


def test_compress_review_loads_everything_styled_like_the_source(qgis_app, tmp_path, spain_db, source_layer,
                                                                 tiny_models):
    from qgis.core import QgsProcessingFeedback

    from qgis_plugin import screenshots

    fb = QgsProcessingFeedback()
    params = {"INPUT": source_layer, "MODEL_FILE": tiny_models["cbam"], "BITS": 6,
              "OUTPUT": str(tmp_path / "scene.sarz"), "RECONSTRUCTION": str(tmp_path / "recon.tif"),
              "OUTPUT_HTML": str(tmp_path / "review.html"), "ERROR_MAP": str(tmp_path / "error.tif"),
              "ENL_MAP": str(tmp_path / "enl.tif"), "EPI_MAP": str(tmp_path / "epi.tif")}
    res, layers = run_and_load("sarae:compress_review", params, fb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enl.tif", "epi.tif", "error.tif", "recon.tif",
                                                          "review.html", "scene.sarz"]
    recon_name = f"{spain_db.stem} — tiny-cbam, {res['BPP']:.2f} bpp"
    assert set(layers) == {recon_name, "Absolute error (dB)", "ENL ratio", "Edge preservation (EPI)"}
    recon = layers[recon_name]
    same_grid(recon, spain_db)
    ce = recon.renderer().contrastEnhancement()
    assert (ce.minimumValue(), ce.maximumValue()) == (-21.5, -1.5)  # the source layer's stretch
    assert res["BPP"] == pytest.approx((tmp_path / "scene.sarz").stat().st_size * 8 / (512 * 512 * 2))
    assert 0 < res["SSIM"] <= 1 and res["RMSE_DB"] > 0 and res["VALID_FRACTION"] == 1.0
    html = (tmp_path / "review.html").read_text(encoding="utf-8")
    assert f"{res['BPP']:.4f} bits per pixel" in html
    # the documentation picture, rendered from these layers
    png = screenshots.review_map(source_layer, recon, layers["Absolute error (dB)"], str(tmp_path / "map.png"),
                                 panel=200)
    from qgis.PyQt.QtGui import QImage

    img = QImage(png)
    assert img.width() > 600 and img.height() > 200
    colors = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
    assert len(colors) > 200, "rendered map looks blank"


def test_compress_review_handles_a_band_subset(qgis_app, tmp_path, spain_db, tiny_models):
    import processing

    res = processing.run("sarae:compress_review", {"INPUT": str(spain_db), "BANDS": "2",
                                                    "MODEL_FILE": tiny_models["cbam"],
                                                    "OUTPUT": str(tmp_path / "a.sarz"),
                                                    "RECONSTRUCTION": str(tmp_path / "r.tif")})
    with rasterio.open(tmp_path / "r.tif") as ds:
        assert ds.count == 1 and ds.descriptions == ("VH",)
    assert 0 < res["SSIM"] <= 1 and res["BPP"] > 0


@pytest.mark.parametrize("cancel_above", [0.0, 40.0], ids=["first-progress", "after-compress"])
def test_cancel_stops_and_leaves_no_output(qgis_app, tmp_path, spain_db, tiny_models, cancel_above):
    from qgis.core import QgsProcessingFeedback, QgsProject

    class CancelAbove(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.seen = []
            self.progressChanged.connect(self._on_progress)

        def _on_progress(self, percent):
            self.seen.append(percent)
            if percent > cancel_above and not self.isCanceled():
                self.cancel()

    fb = CancelAbove()
    n_layers = len(QgsProject.instance().mapLayers())
    params = {"INPUT": str(spain_db), "MODEL_FILE": tiny_models["cbam"], "OUTPUT": str(tmp_path / "a.sarz"),
              "RECONSTRUCTION": str(tmp_path / "r.tif"), "OUTPUT_HTML": str(tmp_path / "r.html"),
              "ERROR_MAP": str(tmp_path / "e.tif"), "ENL_MAP": str(tmp_path / "n.tif"),
              "EPI_MAP": str(tmp_path / "p.tif")}
    res, layers = run_and_load("sarae:compress_review", params, fb)
    assert res == {} and layers == {}
    assert list(tmp_path.iterdir()) == []
    assert len(QgsProject.instance().mapLayers()) == n_layers
    assert "Cancelled: no output was written." in fb.textLog()
    # the work stopped at the next progress report instead of running to the end
    assert min(p for p in fb.seen if p > cancel_above) == max(p for p in fb.seen if p < 100)


@pytest.mark.parametrize("alg", ["sarae:compress", "sarae:reconstruct"])
def test_cancel_takes_effect_within_a_second_and_the_label_follows_the_bar(qgis_app, tmp_path, spain_db, alg):
    """The default model on a 2048 x 2048 mosaic of the real scene: Cancel at ~30 % returns within a second with
    nothing written, and a run lets the progress text change while the bar climbs (not one text per stage)."""
    import time

    from qgis.core import QgsProcessingFeedback

    from sar_ae_core.codec import compress_raster
    from sar_ae_core.io.raster import mosaic_vrt

    vrt = mosaic_vrt(spain_db, tmp_path / "big.vrt", 2048, 2048, band=1)
    sarz = tmp_path / "big.sarz"
    compress_raster(vrt, sarz)
    params = ({"INPUT": str(vrt), "OUTPUT": str(tmp_path / "out.sarz")} if alg == "sarae:compress" else
              {"INPUT": str(sarz), "OUTPUT": str(tmp_path / "out.tif")})

    class CancelAt(QgsProcessingFeedback):
        def __init__(self, at):
            super().__init__()
            self.at, self.cancelled_at, self.texts = at, None, []
            self.progressChanged.connect(self._on_progress)

        def _on_progress(self, percent):
            if self.at is not None and percent > self.at and not self.isCanceled():
                self.cancelled_at = time.perf_counter()
                self.cancel()

        def setProgressText(self, text):
            self.texts.append(text)
            super().setProgressText(text)

    import processing

    fb = CancelAt(30.0)
    res = processing.run(alg, params, feedback=fb)
    latency = time.perf_counter() - fb.cancelled_at
    assert res == {} and latency < 1.0, latency
    assert not (tmp_path / "out.sarz").exists() and not (tmp_path / "out.tif").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))] == []
    whole = CancelAt(None)
    from qgis_plugin.algorithms import base

    base.FeedbackProgress.TEXT_EVERY_S, keep = 0.0, base.FeedbackProgress.TEXT_EVERY_S
    try:
        processing.run(alg, params, feedback=whole)
    finally:
        base.FeedbackProgress.TEXT_EVERY_S = keep
    rows = [t for t in whole.texts if "tile row" in t]
    assert len(set(rows)) >= 4, whole.texts  # the label moves with the bar


# ------------------------------------------------------------------------------------------------
# GUI
# ------------------------------------------------------------------------------------------------
def test_runs_as_a_background_task_like_the_dialog(qtbot, qgis_app, tmp_path, spain_db, tiny_models):
    """The dialog runs algorithms in a QgsProcessingAlgRunnerTask: torch works in the worker thread and
    the event loop keeps turning meanwhile."""
    from qgis.core import (QgsApplication, QgsProcessingAlgorithm, QgsProcessingAlgRunnerTask,
                           QgsProcessingContext, QgsProcessingFeedback)

    alg = QgsApplication.processingRegistry().createAlgorithmById("sarae:attention")
    assert not alg.flags() & QgsProcessingAlgorithm.FlagNoThreading
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    progress, done = [], {}
    feedback.progressChanged.connect(progress.append)
    task = QgsProcessingAlgRunnerTask(alg, {"INPUT": str(spain_db), "MODEL_FILE": tiny_models["cbam"], "TILE": 128,
                                            "OUTPUT": str(tmp_path / "attention.tif")}, context, feedback)
    task.executed.connect(lambda ok, results: done.update(ok=ok, results=results))
    QgsApplication.taskManager().addTask(task)
    qtbot.waitUntil(lambda: "ok" in done, timeout=120_000)
    assert done["ok"] and Path(done["results"]["OUTPUT"]).is_file()
    assert len(progress) >= 4 and progress[-1] == pytest.approx(100.0)



def test_the_first_run_does_not_freeze_the_gui_thread(tmp_path, spain_db):
    """A fresh QGIS (nothing of the codec or ONNX Runtime imported yet) runs compress as the dialog does: the GUI
    thread's event loop never stalls for more than 0.3 s (imports and model loading happen in the worker)."""
    child = Path(__file__).with_name("qgis_first_run_child.py")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "cfg"),
           "GDAL_PAM_ENABLED": "NO", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(child), PROCESSING_PLUGINS, str(spain_db), str(tmp_path / "a.sarz")],
                         env=env, capture_output=True, text=True, timeout=240)
    out = json.loads(run.stdout.split("RESULT", 1)[1])
    assert out["ok"] and (tmp_path / "a.sarz").stat().st_size > 1000
    assert out["ticks"] > 10 and out["max_gap_s"] < 0.3, out


def test_dialog_opens_and_offers_the_project_rasters(qtbot, qgis_app, tmp_path, spain_db, camargue_db):
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapLayerComboBox
    from qgis.PyQt import sip
    from qgis.PyQt.QtWidgets import QComboBox

    from processing.gui.AlgorithmDialog import AlgorithmDialog

    extra = QgsRasterLayer(str(camargue_db), "camargue")
    QgsProject.instance().addMapLayer(extra)
    rasters = {lay.name() for lay in QgsProject.instance().mapLayers().values() if isinstance(lay, QgsRasterLayer)}
    alg = qgis_app.processingRegistry().createAlgorithmById("sarae:compress_review")
    dlg = AlgorithmDialog(alg)
    qtbot.addWidget(dlg)
    dlg.resize(860, 720)
    dlg.show()
    qtbot.waitExposed(dlg)
    wrapper = dlg.mainWidget().wrappers["INPUT"]
    combos = [sip.cast(c, QgsMapLayerComboBox) for c in wrapper.wrappedWidget().findChildren(QComboBox)
              if c.metaObject().className() == "QgsMapLayerComboBox"]
    assert len(combos) == 1
    offered = {combos[0].layer(i).name() for i in range(combos[0].count()) if combos[0].layer(i) is not None}
    assert {"camargue"} <= offered and offered == rasters
    assert wrapper.parameterValue() is not None
    assert dlg.grab().save(str(tmp_path / "dialog.png"))
    assert (tmp_path / "dialog.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------------------------
# qgis_process, packaging, install
# ------------------------------------------------------------------------------------------------
def _qgis_process(args, env):
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_qgis_process_compresses_and_reconstructs(tmp_path, spain_db, tiny_models):
    config = tmp_path / "qgis"
    profile = config / "profiles" / "default"
    subprocess.run([sys.executable, "-m", "qgis_plugin", "install", "--profile", str(profile)], cwd=ROOT,
                   check=True, capture_output=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(config),
           "GDAL_PAM_ENABLED": "NO",
           "HOME": str(tmp_path / "home"), "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    sarz = tmp_path / "scene.sarz"
    run = _qgis_process(["--json", "run", "sarae:compress", "--", f"INPUT={spain_db}",
                         f"MODEL_FILE={tiny_models['cbam']}", f"OUTPUT={sarz}"], env)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)["results"]
    assert out["BYTES"] == sarz.stat().st_size
    tif = tmp_path / "reconstruction.tif"
    run = _qgis_process(["--json", "run", "sarae:reconstruct", "--", f"INPUT={sarz}",
                         f"MODEL_FILE={tiny_models['cbam']}", "UNITS=db", f"OUTPUT={tif}"], env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["results"]["OUTPUT"] == str(tif)
    with rasterio.open(spain_db) as src, rasterio.open(tif) as rec:
        assert (rec.crs, rec.transform, rec.count, rec.dtypes[0]) == (src.crs, src.transform, 2, "float32")
        assert rec.tags()["SARAE_UNITS"] == "db"
    assert not (tmp_path / "home" / ".local" / "share" / "QGIS").exists(), "used a profile outside the temp one"

    # the default output outlives the QGIS session (qgis_process deletes its temporary folder when it ends)
    import shutil

    copy = tmp_path / "copy" / "scene.tif"
    copy.parent.mkdir()
    shutil.copyfile(spain_db, copy)
    run = _qgis_process(["--json", "run", "sarae:compress", "--", f"INPUT={copy}",
                         f"MODEL_FILE={tiny_models['cbam']}", "OUTPUT=TEMPORARY_OUTPUT"], env)
    assert run.returncode == 0, run.stderr[-2000:]
    kept = Path(json.loads(run.stdout)["results"]["OUTPUT"])
    assert kept == copy.with_suffix(".sarz") and kept.stat().st_size > 1000

    # QGIS's own Python without the venv: the provider still loads and the algorithm says what to install
    has_torch = subprocess.run(["/usr/bin/python3", "-c", "import onnxruntime, rasterio"], capture_output=True)
    if has_torch.returncode == 0:
        return
    env.pop("PYTHONPATH")
    run = _qgis_process(["run", "sarae:compress", "--", f"INPUT={spain_db}", f"OUTPUT={tmp_path / 'x.sarz'}"], env)
    text = run.stdout + run.stderr
    assert run.returncode != 0
    assert "needs Python packages that QGIS's Python cannot import" in text
    assert "-m pip install --user" in text and '"onnxruntime>=1.17,<2"' in text and "Traceback" not in text
    assert not (tmp_path / "x.sarz").exists()


def test_package_builds_a_complete_reproducible_zip(tmp_path):
    from sar_ae_core.nn.model_io import bundled_models

    for out in ("a", "b"):
        subprocess.run([sys.executable, "-m", "qgis_plugin", "package", "--out", str(tmp_path / out)], cwd=ROOT,
                       check=True, capture_output=True)
    a, b = tmp_path / "a" / "sarae_codec.zip", tmp_path / "b" / "sarae_codec.zip"
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = set(zf.namelist())
        assert {n.split("/")[0] for n in names} == {"sarae_codec"}
        for required in ("metadata.txt", "__init__.py", "plugin.py", "provider.py", "algorithms/__init__.py",
                         "algorithms/base.py", "algorithms/compress.py", "algorithms/reconstruct.py", "styling.py",
                         "deps.py", "README.md", "icons/sarae.svg", "sar_ae_core/__init__.py",
                         "sar_ae_core/codec.py", "sar_ae_core/quality/assess.py", "sar_ae_core/quality/attention.py",
                         "sar_ae_core/coding/header_dict_v2.txt", "sar_ae_core/coding/wavelet_bank.npy"):
            assert f"sarae_codec/{required}" in names, required
        for model in bundled_models():
            assert f"sarae_codec/sar_ae_core/models_bundled/{model.name}" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", "packaging.py", "__main__.py"))
                    and not n.startswith("sarae_codec/sar_ae_core/")]
        assert "def classFactory(iface)" in zf.read("sarae_codec/__init__.py").decode()
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(zf.read("sarae_codec/metadata.txt").decode())
    g = meta["general"]
    for key in ("name", "description", "about", "author", "email", "tags"):
        assert g.get(key, "").strip(), key
    assert (g["qgisMinimumVersion"], g["version"], g["hasProcessingProvider"], g["category"], g["experimental"]) \
        == ("3.22", "0.1.0", "yes", "Raster", "True")
    assert (ROOT / "qgis_plugin" / g["icon"]).is_file()


def test_install_enables_the_plugin_and_keeps_other_settings(tmp_path):
    from qgis_plugin.packaging import install

    profile = tmp_path / "profile"
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[General]\nfoo=bar\n\n[PythonPlugins]\nother=true\nsarae_codec=false\n\n[Qgis]\nx=1\n")
    target = install(profile)
    assert (target / "metadata.txt").is_file() and (target / "sar_ae_core" / "codec.py").is_file()
    assert ini.read_text() == "[General]\nfoo=bar\n\n[PythonPlugins]\nother=true\nsarae_codec=true\n\n[Qgis]\nx=1\n"
    target = install(profile, link=True)  # replaces the copy with links to the source tree
    assert (target / "algorithms").is_symlink()
    assert (target / "sar_ae_core").resolve() == (ROOT / "sar_ae_core").resolve()
    assert ini.read_text().count("sarae_codec=true") == 1


def test_compress_to_a_target_rate_logs_every_decision(qgis_app, tmp_path, spain_db):
    """Target rate: the file's real bits per pixel within 3 %; the log states units, dB range, coder, escapes."""
    import processing
    from qgis.core import QgsProcessingFeedback

    fb = QgsProcessingFeedback()
    res = processing.run("sarae:compress", {"INPUT": str(spain_db), "TARGET_BPP": 0.4,
                                            "OUTPUT": str(tmp_path / "t.sarz")}, feedback=fb)
    bpp = Path(res["OUTPUT"]).stat().st_size * 8 / (512 * 512 * 2)
    assert res["BPP"] == pytest.approx(bpp) and abs(bpp / 0.4 - 1) <= 0.03
    log = fb.textLog()
    for text in ("Units: db", "dB range: [", "Latent coder: factorized-range", "Kept exactly", "--rate 0.4:"):
        assert text in log, text
    bits = QgsApplication_alg("sarae:compress").parameterDefinition("BITS")
    from qgis.core import QgsProcessingParameterDefinition

    assert bits.flags() & QgsProcessingParameterDefinition.FlagAdvanced  # the default model ignores it


def test_the_rate_search_reports_progress_and_can_be_cancelled(qgis_app, tmp_path, spain_db):
    """Target rate: the bar moves pass by pass (not one step at the end) and the label names the pass; Cancel
    during the search stops it with no output."""
    import processing
    from qgis.core import QgsProcessingFeedback

    class Watch(QgsProcessingFeedback):
        def __init__(self, cancel_above=None):
            super().__init__()
            self.seen, self.texts, self.cancel_above = [], [], cancel_above
            self.progressChanged.connect(self._on_progress)

        def setProgressText(self, text):
            self.texts.append(text)
            super().setProgressText(text)

        def _on_progress(self, percent):
            self.seen.append(percent)
            if self.cancel_above is not None and percent > self.cancel_above and not self.isCanceled():
                self.cancel()

    fb = Watch()
    processing.run("sarae:compress", {"INPUT": str(spain_db), "TARGET_BPP": 0.5, "OUTPUT": str(tmp_path / "t.sarz")},
                   feedback=fb)
    search = [p for p in fb.seen if 5 < p < 95]
    assert len(set(round(p) for p in search)) >= 5 and search == sorted(search)
    assert any(t.startswith("--rate 0.5: pass 3") for t in fb.texts)
    cancel = Watch(cancel_above=30.0)
    res, layers = run_and_load("sarae:compress", {"INPUT": str(spain_db), "TARGET_BPP": 0.5,
                                                  "OUTPUT": str(tmp_path / "c.sarz")}, cancel)
    assert res == {} and layers == {}
    assert "Cancelled: no output was written." in cancel.textLog()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sarz"]


def test_compress_with_a_residual_layer_step(qgis_app, tmp_path, spain_db, tiny_models):
    """Advanced 'Residual layer step': the .sarz carries the layer (logged), and its reconstruction stays within
    one step of the source everywhere."""
    import processing
    import rasterio
    from qgis.core import QgsProcessingFeedback, QgsProcessingParameterDefinition

    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.coding.sarz import SarzFile

    fb = QgsProcessingFeedback()
    res = processing.run("sarae:compress", {"INPUT": str(spain_db), "MODEL_FILE": tiny_models["cbam"],
                                            "RESIDUAL_STEP": 1.5, "OUTPUT": str(tmp_path / "r.sarz")}, feedback=fb)
    assert "Residual layer: step 1.5 dB" in fb.textLog()
    with SarzFile(res["OUTPUT"]) as f:
        assert f.residual_step == 1.5
    reconstruct_raster(res["OUTPUT"], tmp_path / "r.tif", units="db", model=tiny_models["cbam"])
    with rasterio.open(spain_db) as a, rasterio.open(tmp_path / "r.tif") as b:
        src, out = a.read().astype(np.float64), b.read().astype(np.float64)
    ok = np.isfinite(src)
    assert np.abs(out - src)[ok].max() <= 1.5 + 1e-3
    step = QgsApplication_alg("sarae:compress").parameterDefinition("RESIDUAL_STEP")
    assert step.flags() & QgsProcessingParameterDefinition.FlagAdvanced


def test_compress_with_a_decoder_budget(qgis_app, tmp_path):
    """Advanced 'Decoder budget': with a target rate only the light-decoder rate points are candidates (W-Slovakia
    at 1 bpp takes sarae-q4's 9.2 kMAC/px decoder without it), and the rate is still met."""
    import processing
    from qgis.core import QgsProcessingFeedback, QgsProcessingParameterDefinition

    from conftest import SAR_DATA

    from sar_ae_core.codec import sarz_info
    from sar_ae_core.nn.model_io import model_card

    src = SAR_DATA / "fullres" / "s1_grd_wslovakia_vv_db.tif"
    fb = QgsProcessingFeedback()
    res = processing.run("sarae:compress", {"INPUT": str(src), "TARGET_BPP": 1.0, "DECODER_BUDGET": 2.5,
                                            "OUTPUT": str(tmp_path / "b.sarz")}, feedback=fb)
    info = sarz_info(res["OUTPUT"])
    assert model_card(info["model"])["macs"]["decoder_kmac_px"] <= 2.5 and abs(info["bpp"] - 1) <= 0.03
    budget = QgsApplication_alg("sarae:compress").parameterDefinition("DECODER_BUDGET")
    assert budget.flags() & QgsProcessingParameterDefinition.FlagAdvanced


def QgsApplication_alg(alg_id):
    from qgis.core import QgsApplication

    return QgsApplication.processingRegistry().algorithmById(alg_id)


def test_bit_allocation_map_loads_as_a_stretched_overlay(qgis_app, tmp_path, spain_db):
    import processing
    from qgis.core import QgsProcessingFeedback

    sarz = tmp_path / "s.sarz"
    processing.run("sarae:compress", {"INPUT": str(spain_db), "OUTPUT": str(sarz)}, feedback=QgsProcessingFeedback())
    res, layers = run_and_load("sarae:bit_allocation", {"INPUT": str(sarz), "OUTPUT": str(tmp_path / "bits.tif")})
    (name, layer), = layers.items()
    assert name == "s — bits per pixel" and layer.bandCount() == 2
    same_grid(layer, spain_db)
    r = layer.renderer()
    assert r.type() == "singlebandpseudocolor" and r.opacity() < 1
    _, _, lo, hi = ramp_of(r)
    assert 0 < lo < res["MEAN_BPP"] < hi < 3  # stretched to the map's own range, not a fixed 0-1
    nbytes = sarz.stat().st_size
    assert res["MEAN_BPP"] * 512 * 512 * 2 / 8 < nbytes  # latents only: below the whole file


def test_reconstructions_take_the_look_of_their_loaded_source(qgis_app, tmp_path, loaded_copy, tiny_models):
    """A 2-band source drawn as a red/green composite: the reconstruction (compress-and-review, and reconstruct
    of its .sarz) is drawn with the same bands and stretches, not as a gray band 1."""
    from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer

    path, layer = loaded_copy
    r = QgsMultiBandColorRenderer(layer.dataProvider(), 2, 1, -1)
    for band, setter in ((2, r.setRedContrastEnhancement), (1, r.setGreenContrastEnhancement)):
        ce = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        ce.setMinimumValue(-25.0 if band == 2 else -18.0)
        ce.setMaximumValue(-5.0 if band == 2 else 0.0)
        setter(ce)
    layer.setRenderer(r)
    params = {"INPUT": layer, "MODEL_FILE": tiny_models["cbam"], "OUTPUT": str(tmp_path / "a.sarz"),
              "RECONSTRUCTION": str(tmp_path / "a.tif"), "OUTPUT_HTML": None, "ERROR_MAP": None, "ENL_MAP": None,
              "EPI_MAP": None}
    _, layers = run_and_load("sarae:compress_review", params)
    _, layers2 = run_and_load("sarae:reconstruct", {"INPUT": str(tmp_path / "a.sarz"), "MODEL_FILE":
                                                    tiny_models["cbam"], "OUTPUT": str(tmp_path / "b.tif")})
    for rec in (*layers.values(), *layers2.values()):
        rr = rec.renderer()
        assert rr.type() == "multibandcolor" and (rr.redBand(), rr.greenBand(), rr.blueBand()) == (2, 1, -1)
        assert (rr.redContrastEnhancement().minimumValue(), rr.redContrastEnhancement().maximumValue()) == (-25, -5)
        assert (rr.greenContrastEnhancement().minimumValue(), rr.greenContrastEnhancement().maximumValue()) == (-18, 0)
        assert rec.name().startswith("my_scene — tiny-cbam, ")


def test_compress_default_output_when_the_input_folder_takes_no_files(qgis_app, tmp_path, spain_db, tiny_models):
    """A layer read from inside a zip archive (QGIS opens them as /vsizip/…): "beside the input" is no folder, so
    the .sarz goes to QGIS's Processing output folder, the log says where and why, and the archive is unchanged."""
    import zipfile

    import processing
    from qgis.core import QgsProcessingFeedback, QgsProject, QgsRasterLayer

    from qgis_plugin.algorithms.base import processing_output_folder

    archive = tmp_path / "delivery.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(spain_db, "zipped_scene.tif")
    before = _sha256(archive)
    layer = QgsRasterLayer(f"/vsizip/{archive}/zipped_scene.tif", "zipped scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    try:
        fb = QgsProcessingFeedback()
        out = processing.run("sarae:compress", {"INPUT": layer, "MODEL_FILE": tiny_models["cbam"],
                                                "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=fb)["OUTPUT"]
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    folder = processing_output_folder()
    try:
        assert os.path.dirname(out) == folder and Path(out).name.startswith("zipped_scene") and out.endswith(".sarz")
        assert Path(out).stat().st_size > 1000
        assert "in the Processing output folder" in fb.textLog() and "takes no new files" in fb.textLog()
        assert _sha256(archive) == before and sorted(p.name for p in tmp_path.iterdir()) == ["delivery.zip"]
    finally:
        if os.path.exists(out):
            os.remove(out)
