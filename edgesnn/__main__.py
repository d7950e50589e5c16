"""``python -m edgesnn``: the same as the ``edgesnn`` command."""

import sys

from .cli import main

sys.exit(main())
