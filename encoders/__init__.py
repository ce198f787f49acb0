"""Text, image and spaCy encoders (installed as ``mmrec.encoders``).

- :class:`TextEncoder`: BERT-family sentence embeddings (default all-MiniLM-L6-v2, 384-d).
- :class:`ImageEncoder`: EfficientNet-Lite0 ImageNet features (1280-d).
- :func:`clean_text`, :func:`clean_behaviour_texts`, :func:`extract_keyphrases`: normalisation of item text,
  spaCy-tokenizer cleaning of behaviour text, spaCy keyphrases.
"""

from .image import ImageBatchResult, ImageEncoder, ImageEncoderConfig, imagenet_categories, load_image
from .precision import Precision
from .preprocess import CleanConfig, clean_behaviour_texts, clean_text, extract_keyphrases
from .text import TextEncoder, TextEncoderConfig

__all__ = [
    "CleanConfig", "ImageBatchResult", "ImageEncoder", "ImageEncoderConfig", "Precision", "TextEncoder",
    "TextEncoderConfig", "clean_behaviour_texts", "clean_text", "extract_keyphrases", "imagenet_categories",
    "load_image",
]
