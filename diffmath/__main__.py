"""``python -m diffmath``: the command line."""

import sys

from diffmath.cli import main

sys.exit(main())
