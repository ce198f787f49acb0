"""mmrec: multimodal recommendation engine."""
