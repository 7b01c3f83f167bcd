"""Every shared fact has one home (sar_ae_core/defaults.py) and the front ends read it from there."""

import re
from pathlib import Path

from sar_ae_core import defaults

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("UNITS", "UNIT_CHOICES", "SCALING_CHOICES", "CODEC_IDS", "OUTPUT_UNITS", "DEFAULT_MODEL",
          "ATTENTION_MODEL", "QUALITY_MODELS", "RATE_POINTS", "TILE", "HALO_PIXELS")


def test_each_shared_constant_is_defined_once():
    pattern = re.compile(rf"^\s*({'|'.join(SHARED)})\s*(:[^=]*)?=(?!=)", re.M)
    homes: dict[str, list[str]] = {}
    for folder in ("sar_ae_core", "training", "qgis_plugin", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for m in pattern.finditer(text):
                line = text[m.start():text.find("\n", m.start())]
                if re.search(rf"=\s*['\"]{m.group(1)}['\"]\s*$", line):
                    continue  # a Processing parameter's id (TILE = "TILE"), not the fact
                homes.setdefault(m.group(1), []).append(str(path.relative_to(ROOT)))
    assert homes == {name: ["sar_ae_core/defaults.py"] for name in SHARED}


def test_front_ends_offer_the_shared_choices():
    from sar_ae_core.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    compress = {a.dest: a for a in sub["compress"]._actions}
    assert tuple(compress["codec"].choices) == ("auto",) + defaults.CODEC_IDS
    assert tuple(compress["units"].choices) == defaults.UNIT_CHOICES
    assert tuple(compress["scaling"].choices) == defaults.SCALING_CHOICES
    assert compress["tile"].default == defaults.TILE
    from sar_ae_core.coding.latent_coding import codec_from_params

    for cid in defaults.CODEC_IDS:  # every id has a reader (tables are needed for the learned ones)
        try:
            codec_from_params({"id": cid, "bits": 8})
        except ValueError:
            pass
