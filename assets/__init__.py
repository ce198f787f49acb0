"""Bundled data (installed as ``mmrec.assets``): ``ml-latest-small/``, a MovieLens catalogue with interactions and
tags, which ``mmrec demo`` runs on."""
