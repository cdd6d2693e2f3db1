"""``python -m flows.cli``: the ``pgl`` command."""

import sys

from flows.cli import main

sys.exit(main())
