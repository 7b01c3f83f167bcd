"""`python -m sar_ae_core`: the command line."""

import sys

from sar_ae_core.io.output import Terminated, terminate_as_cancel

terminate_as_cancel()  # from the first moment: a SIGTERM during start-up ends quietly too (exit 143)
try:
    from sar_ae_core.cli import main

    code = main()
except Terminated:
    from sar_ae_core.io.output import discard_pending

    discard_pending()
    print("terminated: no output written", file=sys.stderr)
    code = 143
sys.exit(code)
