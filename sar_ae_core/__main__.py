"""`python -m sar_ae_core`: the command line."""

import os
import sys

from sar_ae_core.io.output import terminate_as_cancel, was_terminated

terminate_as_cancel()  # from the first moment: a SIGTERM during start-up ends quietly too (exit 143)
try:
    from sar_ae_core.cli import main

    code = main()
except BaseException as exc:  # noqa: B036 — only a SIGTERM's own unwinding is handled here
    if not was_terminated(exc):
        raise
    from sar_ae_core.io.output import discard_pending

    discard_pending()
    print("terminated: no output written", file=sys.stderr)
    code = 143
# Every output is committed (or removed) and every pool shut down by now: the interpreter's own teardown (freeing the
# ONNX Runtime sessions, GDAL and numpy state) only costs time, ~5 % of a 4096² reconstruct, so the process ends here.
# `batch` keeps the normal exit (its Dask cluster's own exit handlers).
try:
    sys.stdout.flush()
    sys.stderr.flush()
except (BrokenPipeError, OSError, ValueError):
    code = code or 141
if len(sys.argv) > 1 and sys.argv[1] != "batch":
    os._exit(code)
sys.exit(code)
