"""Same as ``mmrec refresh``: see ``python scripts/refresh_interests.py --help``."""

import sys

from mmrec.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("refresh"))
