"""Siamese/attention fusion of item modalities (installed as ``mmrec.fusion``)."""

from .model import FusionConfig, ItemFusion, ModalityAdapter, ModalityAttention, SiameseTower

__all__ = ["FusionConfig", "ItemFusion", "ModalityAdapter", "ModalityAttention", "SiameseTower"]
