"""Networks: the interest GRU, the MLP scorer and the multimodal recommender built on the fusion layer
(:mod:`mmrec.fusion`); the ID-only baselines live in :mod:`mmrec.baselines`. All read :class:`mmrec.data.SequenceBatch`.
"""
