"""`python -m sar_ae_core`: the command line."""

import sys

from .output import Terminated, terminate_as_cancel

terminate_as_cancel()  # from the first moment: a SIGTERM during start-up ends quietly too (exit 143)
try:
    from .cli import main

    code = main()
except Terminated:
    from .output import discard_pending

    discard_pending()
    print("terminated: no output written", file=sys.stderr)
    code = 143
sys.exit(code)
