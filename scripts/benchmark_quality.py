"""Same as ``mmrec report``: every baseline and our model on the identical split, 3 seeds, warm and cold items;
writes report.md, results.json and PNG plots. See ``python scripts/benchmark_quality.py --help``."""

import sys

from mmrec.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("report"))
