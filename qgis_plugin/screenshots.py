"""Documentation screenshots rendered headless: a map of the source, its reconstruction and the error
overlay (docs/img/qgis_map.png), and the 'Compress and review' dialog (docs/img/qgis_dialog.png).

Run `python -m qgis_plugin screenshots [--model PATH]`; it runs the real algorithm on the bundled
Sentinel-1 sample through Processing, so the pictures show what a user gets.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SAMPLE = Path(__file__).resolve().parents[1] / "sar_ae_core" / "sample" / \
    "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"
PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"
_PROVIDER: list = []
_APP: list = []


def start_qgis(profile_root: Optional[str] = None):
    """The running QgsApplication, or a new headless one (with its own settings folder) with Processing."""
    from qgis.core import QgsApplication

    from osgeo import gdal

    gdal.SetConfigOption("GDAL_PAM_ENABLED", "NO")  # no histogram .aux.xml beside the bundled sample
    app = QgsApplication.instance()
    if app is None:
        if profile_root:
            os.environ["QGIS_CUSTOM_CONFIG_PATH"] = profile_root  # keep the user's profile untouched
        app = QgsApplication([], True)
        app.initQgis()
        _APP.append(app)  # the application dies with its last Python reference
    if PROCESSING_PLUGINS not in sys.path and os.path.isdir(PROCESSING_PLUGINS):
        sys.path.append(PROCESSING_PLUGINS)
    from processing.core.Processing import Processing

    Processing.initialize()
    registry = QgsApplication.processingRegistry()
    if registry.providerById("sarae") is None:
        from .provider import SarAeProvider

        _PROVIDER.append(SarAeProvider())  # the registry keeps only the C++ side alive
        registry.addProvider(_PROVIDER[-1])
    return app


def render_layers(layers: Sequence, extent, width: int, height: int):
    """Render layers (top first) over `extent` into a QImage with the parallel renderer."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(list(layers))
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def review_map(source, reconstruction, error, path: str, panel: int = 420, caption: str = "") -> str:
    """Save a PNG: source | reconstruction | reconstruction with the error overlay, a dB color bar and a caption."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QImage, QLinearGradient, QPainter

    extent = source.extent()
    aspect = extent.height() / extent.width() if extent.width() else 1.0
    ph = int(round(panel * aspect))
    opacity = error.renderer().opacity()
    error.renderer().setOpacity(0.65)
    try:
        panels = [(render_layers([source], extent, panel, ph), "Source (VV, dB)"),
                  (render_layers([reconstruction], extent, panel, ph), "Reconstruction (same stretch)"),
                  (render_layers([error, reconstruction], extent, panel, ph), "Reconstruction + absolute error")]
    finally:
        error.renderer().setOpacity(opacity)
    margin, title_h, bar_h = 12, 28, 64
    img = QImage(margin + 3 * (panel + margin), title_h + ph + bar_h + margin, QImage.Format_ARGB32)
    img.fill(QColor(255, 255, 255))
    p = QPainter(img)
    p.setRenderHint(QPainter.Antialiasing)
    font = QFont("DejaVu Sans", 11)
    p.setFont(font)
    for i, (image, title) in enumerate(panels):
        x = margin + i * (panel + margin)
        p.drawText(QRect(x, 0, panel, title_h), Qt.AlignCenter, title)
        p.drawImage(x, title_h, image)
        p.setPen(QColor(120, 120, 120))
        p.drawRect(x, title_h, panel - 1, ph - 1)
        p.setPen(QColor(0, 0, 0))
    # color bar of the error layer's ramp, labelled in dB
    fn = error.renderer().shader().rasterShaderFunction()
    items = fn.colorRampItemList()
    x0, x1 = margin + 2 * (panel + margin) + 20, margin + 3 * (panel + margin) - margin - 20
    y = title_h + ph + 14
    grad = QLinearGradient(x0, 0, x1, 0)
    lo, hi = items[0].value, items[-1].value
    for it in items:
        grad.setColorAt((it.value - lo) / (hi - lo) if hi > lo else 0.0, it.color)
    p.fillRect(QRect(x0, y, x1 - x0, 14), grad)
    p.setFont(QFont("DejaVu Sans", 9))
    for it in items:
        tx = int(x0 + (it.value - lo) / (hi - lo) * (x1 - x0)) if hi > lo else x0
        p.drawText(QRect(tx - 40, y + 16, 80, 18), Qt.AlignCenter, it.label)
    p.drawText(QRect(margin, y - 4, x0 - margin - 10, 20), Qt.AlignLeft | Qt.AlignVCenter,
               "Absolute error of the backscatter (dB), 0 to its 98th percentile:")
    if caption:
        p.drawText(QRect(margin, y + 18, x0 - margin - 10, 20), Qt.AlignLeft | Qt.AlignVCenter, caption)
    p.end()
    img.save(path)
    return path


def dialog_image(algorithm_id: str, path: str, parameters: Optional[dict] = None, width: int = 860,
                 height: int = 860) -> str:
    """Open an algorithm's Processing dialog offscreen (optionally filled in) and save a picture of it."""
    from qgis.core import QgsApplication
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    alg = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    dlg = AlgorithmDialog(alg)
    if parameters:
        dlg.setParameters(parameters)
    dlg.resize(width, height)
    dlg.show()
    QgsApplication.processEvents()
    dlg.grab().save(path)
    dlg.close()
    dlg.deleteLater()
    QgsApplication.processEvents()
    return path


def review_layers(source_path: str, model: Optional[str], work: str) -> dict:
    """Run 'Compress and review' on a raster layer in the project; returns the loaded layers by name."""
    import processing
    from qgis.core import QgsProcessingFeedback, QgsProject, QgsRasterLayer

    from . import styling

    source = QgsRasterLayer(str(source_path), "Sentinel-1 VV+VH (dB)")
    styling.style_gray(source, *styling.cumulative_cut(source, 1, 0.02, 0.98))  # as a user would look at VV
    QgsProject.instance().addMapLayer(source)
    params = {"INPUT": source, "OUTPUT": os.path.join(work, "scene.sarz"),
              "RECONSTRUCTION": os.path.join(work, "reconstruction.tif"),
              "OUTPUT_HTML": os.path.join(work, "report.html"), "ERROR_MAP": os.path.join(work, "error.tif"),
              "ENL_MAP": os.path.join(work, "enl.tif"), "EPI_MAP": os.path.join(work, "epi.tif")}
    if model:
        params["MODEL_FILE"] = model
    results = processing.runAndLoadResults("sarae:compress_review", params, feedback=QgsProcessingFeedback())
    layers = {layer.name(): layer for layer in QgsProject.instance().mapLayers().values()}
    # the reconstruction is named after its source, model and rate ("scene — sarae-q2, 0.53 bpp")
    layers["_reconstruction"] = next(lay for name, lay in layers.items() if name.endswith(" bpp"))
    layers["_source"] = source
    layers["_results"] = results
    layers["_params"] = params
    return layers


def main(out: str = "docs/img", model: Optional[str] = None) -> int:
    """Write qgis_map.png and qgis_dialog.png into `out`."""
    from qgis.core import QgsProject

    from .algorithms.base import DEFAULT_MODEL, bundled_model_names

    if model is None and not bundled_model_names():
        print("no bundled model: pass --model PATH to a .pt bundle", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sarae-shots-") as work:
        start_qgis(os.path.join(work, "qgis-profile"))
        layers = review_layers(str(SAMPLE), model, work)
        r = layers["_results"]
        caption = (f"Model {Path(model).stem if model else DEFAULT_MODEL}, both bands: {r['BPP']:.3f} bits per pixel, "
                   f"PSNR {r['PSNR']:.2f} dB, SSIM {r['SSIM']:.3f}, RMSE {r['RMSE_DB']:.2f} dB, "
                   f"ENL ratio {r['ENL_RATIO']:.2f}, EPI {r['EPI']:.2f}")
        print(caption)
        print(review_map(layers["_source"], layers["_reconstruction"], layers["Absolute error (dB)"],
                         os.path.join(out, "qgis_map.png"), caption=caption))
        shown = {"INPUT": layers["_source"], **({"MODEL_FILE": model} if model else {})}
        print(dialog_image("sarae:compress_review", os.path.join(out, "qgis_dialog.png"), shown))
        layers.clear()
        QgsProject.instance().removeAllMapLayers()
    return 0
