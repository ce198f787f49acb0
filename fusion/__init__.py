"""Siamese/attention fusion of item modalities (installed as mmrec.fusion)."""
