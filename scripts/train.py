"""Same as ``mmrec train``: see ``python scripts/train.py --help``."""

import sys

from mmrec.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train"))
