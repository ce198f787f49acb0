"""Text, image and spaCy encoders (installed as mmrec.encoders)."""
