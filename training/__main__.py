"""`python -m training`: train, export and compare SAR autoencoders (see `python -m training --help`)."""

import sys

from .cli import main

sys.exit(main())
