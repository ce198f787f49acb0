"""Embed new or changed catalogue items into a store (same as ``mmrec embed``).

    python scripts/embed_catalog.py CATALOG --store STORE_DIR [--images-root DIR] [--text-columns a,b,c] [--json]

Exit status: 0 all rows stored; 3 finished but some rows rejected (listed); 1 invalid catalogue or error; 2 usage.
"""

import sys

from mmrec.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("embed"))
