"""``python -m kiq``: the ``kiq`` command."""

import sys

from kiq.cli import main

sys.exit(main())
