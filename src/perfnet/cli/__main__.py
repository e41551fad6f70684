"""``python -m perfnet.cli``."""

import sys

from perfnet.cli import main

sys.exit(main())
