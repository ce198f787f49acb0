"""Same as ``mmrec evaluate``: see ``python scripts/evaluate.py --help``."""

import sys

from mmrec.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate"))
