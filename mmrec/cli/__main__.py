"""``python -m mmrec.cli``: the ``mmrec`` command."""

import sys

from . import main

sys.exit(main())
