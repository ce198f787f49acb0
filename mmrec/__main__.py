"""``python -m mmrec``: the ``mmrec`` command, also as ``torchrun --nproc-per-node N -m mmrec train ...``, which trains
on N processes (docs/training.md)."""

import os
import sys

from .cli import EXIT_USAGE, main

# Only training shares its work between torchrun's processes: any other subcommand would run once in each of them,
# every copy writing the same store.
if int(os.environ.get("WORLD_SIZE") or 1) > 1 and sys.argv[1:2] != ["train"]:
    print(f"error: only `mmrec train` runs under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); run "
          f"`mmrec {' '.join(sys.argv[1:2]) or '...'}` as one process", file=sys.stderr)
    sys.exit(EXIT_USAGE)
sys.exit(main())
