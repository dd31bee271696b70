"""``python -m glimpse_edge`` is the ``glimpse-edge`` command."""

import sys

from .cli import main

sys.exit(main())
