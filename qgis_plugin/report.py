"""HTML report of an assessment (and optionally of the compression it follows), for Processing's
results viewer."""

from __future__ import annotations

import html
import math
import os
from typing import Optional

METRICS = (
    ("psnr", "PSNR", "dB", 2, "peak signal-to-noise ratio of dB values scaled to [0, 1]; higher is better"),
    ("ssim", "SSIM", "", 4, "structural similarity; 1 is identical"),
    ("rmse_db", "RMSE", "dB", 3, "root mean square error of the backscatter in dB; lower is better"),
    ("enl_ratio", "ENL ratio", "", 3,
     "equivalent number of looks of the reconstruction / reference over homogeneous areas; "
     "above 1 the codec smoothed speckle, below 1 it added noise"),
    ("epi", "EPI", "", 3, "edge preservation index (gradient correlation); 1 keeps every edge"),
    ("valid_fraction", "Valid pixels", "", 4, "fraction of pixels valid in both rasters"),
)


def _fmt(value, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "∞" if value > 0 else ("−∞" if value < 0 else "n/a")
    return f"{value:.{digits}f}"


def assessment_html(result: dict, *, title: str = "Reconstruction quality",
                    compression: Optional[dict] = None) -> str:
    """An HTML page with the pooled and per-band metrics of `assess_rasters` (and the rate, if given)."""
    e = html.escape
    bands = result.get("bands") or []
    head = "".join(f"<th>{e(label)}{' (' + unit + ')' if unit else ''}</th>" for _, label, unit, _, _ in METRICS)
    rows = [f"<tr><th>all bands</th>{''.join(f'<td>{_fmt(result.get(k), d)}</td>' for k, _, _, d, _ in METRICS)}</tr>"]
    for b in bands:
        name = b.get("name") or ""
        label = f"band {b.get('band')}" + (f" {name}" if name else "")
        rows.append(f"<tr><th>{e(label)}</th>"
                    f"{''.join(f'<td>{_fmt(b.get(k), d)}</td>' for k, _, _, d, _ in METRICS)}</tr>")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
        "dt{font-weight:bold}</style></head><body>",
        f"<h2>{e(title)}</h2>",
        f"<p>Reference: <code>{e(str(result.get('reference', '')))}</code><br>"
        f"Reconstruction: <code>{e(str(result.get('test', '')))}</code></p>",
    ]
    if compression:
        parts.append(
            f"<p>Compressed file: <code>{e(str(compression.get('output', '')))}</code>, "
            f"{compression.get('bytes', 0):,} bytes = <b>{_fmt(compression.get('bpp'), 4)} bits per pixel</b> "
            f"(compression ratio {_fmt(compression.get('compression_ratio'), 1)}:1 against the source's samples), "
            f"model {e(str(compression.get('model', '')))}.</p>")
    parts.append(f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>")
    ranges = [f"band {b.get('band')}: [{_fmt(b['range_db'][0], 2)}, {_fmt(b['range_db'][1], 2)}] dB"
              for b in bands if b.get("range_db")]
    if ranges:
        parts.append(f"<p>PSNR/SSIM dB range (reference 1st–99th percentile): {e('; '.join(ranges))}</p>")
    parts.append("<dl>" + "".join(f"<dt>{e(label)}</dt><dd>{e(text)}</dd>" for _, label, _, _, text in METRICS)
                 + "</dl>")
    maps = result.get("maps") or {}
    if maps:
        parts.append("<p>Maps: " + ", ".join(f"{e(k)}: <code>{e(str(v))}</code>" for k, v in maps.items()) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_text_atomic(path: str, text: str) -> str:
    """Write a UTF-8 text file that appears only when complete (the core's AtomicOutput)."""
    from sar_ae_core.io.raster import AtomicOutput

    with AtomicOutput(path, overwrite=True, suffix=os.path.splitext(path)[1]) as out:
        with open(out.tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return path
