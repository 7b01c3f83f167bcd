"""`python -m qgis_plugin package|install|screenshots`: build the plugin zip, install it into a QGIS
profile, or render the documentation screenshots headless."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m qgis_plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("package", help="build dist/sarae_codec.zip (plugin + metadata + vendored sar_ae_core + models)")
    p.add_argument("--out", default="dist", help="output folder (default: dist)")
    p = sub.add_parser("install", help="install the plugin into a QGIS profile and enable it")
    p.add_argument("--profile", default=None,
                   help="QGIS profile folder (default: this user's 'default' profile, e.g. "
                        "~/.local/share/QGIS/QGIS3/profiles/default)")
    p.add_argument("--link", action="store_true", help="symlink the source tree instead of copying (development)")
    p = sub.add_parser("screenshots", help="render docs/img/qgis_map.png and docs/img/qgis_dialog.png headless")
    p.add_argument("--out", default="docs/img", help="output folder (default: docs/img)")
    p.add_argument("--model", default=None, help="model bundle (default: the bundled default model)")
    args = parser.parse_args(argv)

    if args.command == "package":
        from .packaging import build_zip

        print(build_zip(args.out))
        return 0
    if args.command == "install":
        from .packaging import install

        target = install(args.profile, link=args.link)
        print(f"installed {target} and enabled it; restart QGIS (or run qgis_process) to load the provider 'sarae'")
        return 0
    from .screenshots import main as screenshots

    return screenshots(args.out, args.model)


if __name__ == "__main__":
    sys.exit(main())
