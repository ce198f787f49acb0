"""Rows -> interactions, the leave-one-out split, behaviour sequences and the one batch type models read.

    interaction rows ──► load_interactions ──► Interactions ──► leave_one_out ──► Split
    Split (+ text-bearing context events) ──► build_behaviour ──► Behaviour
    Behaviour ──► windows / context ──► SequenceBatch        (every model: training windows, evaluation contexts)
    Split ──► training_windows ──► Windows ──► SequenceBatch  (the ID-only baselines' training windows)
"""

from .batch import N_GAP_BUCKETS, SequenceBatch, Windows, gap_buckets, training_windows
from .behaviour import Behaviour, ContextEvents, build_behaviour
from .interactions import DEFAULT_EVENT, Interactions, ItemIndex, load_interactions
from .split import Sequences, Split, Stage, hold_out_items, leave_one_out

__all__ = [
    "DEFAULT_EVENT", "N_GAP_BUCKETS", "Behaviour", "ContextEvents", "Interactions", "ItemIndex", "SequenceBatch",
    "Sequences", "Split", "Stage", "Windows", "build_behaviour", "gap_buckets", "hold_out_items", "leave_one_out",
    "load_interactions", "training_windows",
]
