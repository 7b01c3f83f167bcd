"""Renderers for the layers the algorithms produce, and the post-processor that applies them on load.

Each output gets a look that reads at a glance: error in dB on a sequential ramp, ENL ratio on a
diverging ramp centred on 1, EPI on 0–1, attention as a semi-transparent heat overlay, and the
reconstruction in gray with the same stretch as its source so the two can be compared by eye.
"""

from __future__ import annotations

import math

import collections
from typing import Callable, Optional

from qgis.core import (
    QgsColorRampLegendNodeSettings,
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsProcessingContext,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)

ERROR_RAMP = "Reds"
ENL_RAMP = "RdBu"
EPI_RAMP = "Viridis"
ATTENTION_RAMP = "Inferno"
ENL_RANGE = (0.5, 1.5)
ATTENTION_OPACITY = 0.6
ERROR_PERCENTILE = 0.98


def color_ramp(name: str):
    """A copy of a color ramp from QGIS's default style (ValueError if it has no such ramp)."""
    ramp = QgsStyle.defaultStyle().colorRamp(name)
    if ramp is None:
        raise ValueError(f"QGIS's default style has no color ramp '{name}'")
    return ramp


def pseudocolor(layer: QgsRasterLayer, band: int, ramp_name: str, vmin: float, vmax: float, *,
                suffix: str = "", classes: int = 5, precision: int = 2) -> QgsSingleBandPseudoColorRenderer:
    """Set an interpolated single-band pseudocolor renderer from vmin to vmax, labelled with `suffix`."""
    ramp = color_ramp(ramp_name)
    fn = QgsColorRampShader(vmin, vmax, ramp.clone(), QgsColorRampShader.Interpolated)
    items = []
    for i in range(classes):
        t = i / (classes - 1)
        value = vmin + t * (vmax - vmin)
        items.append(QgsColorRampShader.ColorRampItem(value, ramp.color(t), f"{value:.{precision}f}{suffix}"))
    fn.setColorRampItemList(items)
    legend = QgsColorRampLegendNodeSettings()
    legend.setSuffix(suffix)
    fn.setLegendSettings(legend)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(vmin)
    renderer.setClassificationMax(vmax)
    layer.setRenderer(renderer)
    return renderer


def cumulative_cut(layer: QgsRasterLayer, band: int, low: float, high: float) -> tuple[float, float]:
    """Values at the `low` and `high` fractions of the band's histogram (QGIS's cumulative count cut)."""
    lo, hi = layer.dataProvider().cumulativeCut(band, low, high)
    return float(lo), float(hi)


def style_error_map(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """Absolute error in dB: sequential ramp from 0 to its 98th percentile, legend in dB."""
    _, p98 = cumulative_cut(layer, band, 0.0, ERROR_PERCENTILE)
    return pseudocolor(layer, band, ERROR_RAMP, 0.0, p98 if p98 > 0 else 1.0, suffix=" dB")


def style_enl_ratio(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """Local ENL ratio (homogeneous areas only): diverging ramp centred on 1 (red: speckle added, blue:
    smoothed), symmetric around 1 and wide enough for the map's own 2–98 % range (at least ENL_RANGE)."""
    lo, hi = cumulative_cut(layer, band, 0.02, 0.98)
    half = max(ENL_RANGE[1] - 1.0, 1.0 - ENL_RANGE[0])
    if math.isfinite(lo) and math.isfinite(hi):
        half = min(max(half, 1.0 - lo, hi - 1.0), 0.9)
    return pseudocolor(layer, band, ENL_RAMP, 1.0 - half, 1.0 + half)


def style_epi(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """Local edge preservation index stretched over its own 2–98 % range (it mostly lives in 0.8–1)."""
    lo, hi = cumulative_cut(layer, band, 0.02, 0.98)
    lo, hi = max(0.0, lo), min(1.0, hi)
    if not hi > lo:
        lo, hi = 0.0, 1.0
    return pseudocolor(layer, band, EPI_RAMP, lo, hi, precision=3)


def style_attention(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """Attention as a semi-transparent heat overlay stretched over its 2–98 % range (maps rarely span 0–1)."""
    lo, hi = cumulative_cut(layer, band, 0.02, 0.98)
    if not hi > lo:
        lo, hi = 0.0, 1.0
    renderer = pseudocolor(layer, band, ATTENTION_RAMP, lo, hi, precision=3)
    renderer.setOpacity(ATTENTION_OPACITY)
    return renderer


def style_bit_allocation(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """Bits per pixel as a semi-transparent heat overlay stretched over the map's own 2–98 % range."""
    lo, hi = cumulative_cut(layer, band, 0.02, 0.98)
    if not hi > lo:
        lo, hi = 0.0, max(hi, 1.0)
    renderer = pseudocolor(layer, band, ATTENTION_RAMP, lo, hi, precision=3)
    renderer.setOpacity(ATTENTION_OPACITY)
    return renderer


def style_gray(layer: QgsRasterLayer, vmin: float, vmax: float, band: int = 1) -> QgsSingleBandGrayRenderer:
    """Single-band gray with a fixed min/max stretch."""
    renderer = QgsSingleBandGrayRenderer(layer.dataProvider(), band)
    ce = QgsContrastEnhancement(layer.dataProvider().dataType(band))
    ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    ce.setMinimumValue(vmin)
    ce.setMaximumValue(vmax)
    renderer.setContrastEnhancement(ce)
    layer.setRenderer(renderer)
    return renderer


def layer_stretch(layer: QgsRasterLayer, band: int = 1) -> tuple[float, float]:
    """The min/max stretch a layer shows `band` with; its 2–98 % cut when its renderer has none for it."""
    r = layer.renderer()
    ce = None
    if isinstance(r, QgsSingleBandGrayRenderer) and r.grayBand() == band:
        ce = r.contrastEnhancement()
    elif isinstance(r, QgsMultiBandColorRenderer):
        for b, get in ((r.redBand(), r.redContrastEnhancement), (r.greenBand(), r.greenContrastEnhancement),
                       (r.blueBand(), r.blueContrastEnhancement)):
            if b == band and get() is not None:
                ce = get()
                break
    if ce is not None and ce.maximumValue() > ce.minimumValue():
        return float(ce.minimumValue()), float(ce.maximumValue())
    return cumulative_cut(layer, band, 0.02, 0.98)


def style_reconstruction(stretch: Optional[tuple[float, float]] = None, band: int = 1) -> Callable:
    """A styler: gray band `band` with the source's stretch, or the layer's own 2–98 % cut when None."""
    def apply(layer: QgsRasterLayer):
        lo, hi = stretch if stretch is not None else cumulative_cut(layer, band, 0.02, 0.98)
        return style_gray(layer, lo, hi, band)
    return apply


def style_like(renderer) -> Callable:
    """A styler: a copy of a source layer's renderer (band combination, stretch, colors) on the reconstruction,
    so that the two look alike; `renderer` is cloned on the main thread beforehand."""
    def apply(layer: QgsRasterLayer):
        copy = renderer.clone()
        layer.setRenderer(copy)
        return copy
    return apply


def source_renderer(layer: Optional[QgsRasterLayer], band_count: int):
    """A clone of `layer`'s renderer when it can be reused on a raster of `band_count` bands (else None)."""
    if layer is None or not layer.isValid() or layer.renderer() is None or layer.bandCount() != band_count:
        return None
    return layer.renderer().clone()


class StyleOnLoad(QgsProcessingLayerPostProcessorInterface):
    """Applies a styler (and a name) to an output layer once Processing has loaded it into the project."""

    def __init__(self, styler: Callable[[QgsRasterLayer], object], name: Optional[str] = None):
        super().__init__()
        self.styler = styler
        self.name = name

    def postProcessLayer(self, layer, context, feedback):
        """Style the loaded layer (called by Processing on the main thread)."""
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            return
        if self.name:
            layer.setName(self.name)
        self.styler(layer)
        layer.triggerRepaint()


# Processing keeps only a C++ pointer to a post-processor: the Python object must outlive the algorithm
# (which the GUI runs on a copy that is deleted before the layers are loaded).
_ALIVE: collections.deque = collections.deque(maxlen=256)


def style_when_loaded(context: QgsProcessingContext, path: str, styler: Callable, name: Optional[str] = None) -> None:
    """Ask Processing to style `path` with `styler` when it loads the output onto the map."""
    if not path or not context.willLoadLayerOnCompletion(path):
        return
    post = StyleOnLoad(styler, name)
    _ALIVE.append(post)
    context.layerToLoadOnCompletionDetails(path).setPostProcessor(post)
