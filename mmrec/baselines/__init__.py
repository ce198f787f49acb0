"""ID-only baselines (popularity, BPR, GRU4Rec, SASRec) sharing the SequentialModel interface."""
