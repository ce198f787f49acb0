"""Text cleaning is linear in its input and capped before any work, and ordinary text is cleaned exactly as before.

``_reference_clean_text`` is the implementation this replaced (git history: encoders/preprocess.py before the
linear rewrite), kept here as the oracle for outputs. It backtracks quadratically on ``<script>`` runs, so it is only
ever given small or ordinary inputs.
"""

from __future__ import annotations

import html
import random
import re
import time
import unicodedata

import pandas as pd
import pytest

from mmrec.encoders import CleanConfig, clean_behaviour_texts, clean_text

from ..conftest import ASSETS

_OLD_TAG = re.compile(r"<[^>]{0,500}>")
_OLD_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_OLD_SPACE = re.compile(r"\s+")


def _reference_clean_text(text, config: CleanConfig = CleanConfig()) -> str:
    if text is None or (isinstance(text, float) and text != text):
        return ""
    text = str(text)
    if "<" in text:
        text = _OLD_TAG.sub(" ", _OLD_SCRIPT.sub(" ", text))
    text = unicodedata.normalize("NFKC", html.unescape(text))
    if not text.isprintable():
        text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = _OLD_SPACE.sub(" ", text).strip()
    if len(text) > config.max_chars:
        cut = text[: config.max_chars]
        boundary = cut.rfind(" ")
        text = cut[:boundary] if boundary > config.max_chars // 2 else cut
    return text


def _catalogue_texts() -> list[str]:
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False)
    tags = pd.read_csv(ASSETS / "tags.csv", dtype=str, keep_default_na=False)
    texts = list(items.title) + list(items.genres) + list(items.tags) + list(tags.tag)
    return texts


def test_catalogue_titles_and_tags_clean_exactly_as_before():
    texts = _catalogue_texts()
    assert len(texts) > 20000
    for config in (CleanConfig(), CleanConfig(max_chars=20)):
        assert [clean_text(t, config) for t in texts] == [_reference_clean_text(t, config) for t in texts]
    # Composed catalogue text (title, genres and tags of one item) is the same too.
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False).head(2000)
    composed = [f"{r.title}. genres: {r.genres}. tags: {r.tags} &amp; <b>{r.year}</b>" for r in items.itertuples()]
    assert [clean_text(t) for t in composed] == [_reference_clean_text(t) for t in composed]


def test_markup_is_removed_exactly_as_before_on_small_inputs():
    """Every piece of markup the old regexes handled (script/style blocks in any case, tags of up to 500 characters,
    entities, unclosed and stray brackets), in random small combinations where the old code is still fast."""
    from mmrec.encoders.preprocess import RAW_CHARS_PER_CHAR

    pieces = ["<b>", "</b>", "<script>", "</script>", "</SCRIPT >", "<Style type='x'>", "</style>", "<", ">", "<<",
              "<!-- ", " -->", "&amp;", "&lt;i&gt;", "&nbsp;", "word", " ", "\n", "\x00", "<scripts>", "<br/>",
              "<a href=\"x\">", "é", "ﬁ", "<" + "x" * 499 + ">", "<" + "y" * 501 + ">", "sci-fi", "<3"]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        assert clean_text(text) == _reference_clean_text(text), repr(text)
        # With a small output cap the raw cap (8 x 7 = 56 characters) applies first: the old cleaning of the first
        # 56 characters.
        small = CleanConfig(max_chars=7)
        assert clean_text(text, small) == _reference_clean_text(text[: 7 * RAW_CHARS_PER_CHAR], small), repr(text)


def _adversarial(size: int) -> dict[str, str]:
    def fill(unit: str) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    return {
        "script runs": fill("<script>"),
        "style and script": fill("<style><script x='"),
        "unclosed tags": fill("<a "),
        "unclosed attributes": "<a href=\"" + fill("x"),
        "nested comments": fill("<!-- <!-- -->"),
        "brackets": fill("<"),
        "bracket pairs": fill("<<<<>"),
        "mixed": fill("<script>x<!-- <<<< <a b=\"</style"),
    }


def _plain(size: int) -> str:
    words = "the quick brown fox jumps over the lazy dog while a film plays".split()
    rng = random.Random(1)
    return " ".join(rng.choice(words) for _ in range(size // 4))[:size]


def _seconds(function, *args) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the CI machine is shared, a single sample can be a scheduling hiccup
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("max_chars", [None, 4_000_000], ids=["default cap", "no cap in reach"])
def test_adversarial_markup_costs_about_what_plain_text_costs(max_chars):
    # Sizes grow so that a quadratic implementation fails on the small one instead of running for minutes.
    # "no cap in reach": the raw-input cap is far above 1 MB, so the markup pass itself must be linear.
    config = CleanConfig() if max_chars is None else CleanConfig(max_chars=max_chars)
    for size in (16_000, 1 << 20):
        plain = _seconds(clean_text, _plain(size), config)
        for name, text in _adversarial(size).items():
            took = _seconds(clean_text, text, config)
            # 5x plain text, plus a floor for timer noise on the capped (microsecond) runs
            assert took <= 5 * plain + 0.02, f"{name} ({size} chars): {took:.4f}s vs plain {plain:.4f}s"


def test_behaviour_texts_of_adversarial_markup_cost_the_same_at_any_size():
    # Behaviour cleaning reads clean_text's output (at most max_chars characters), so 1 MB of markup costs what
    # 16 KB costs. Each measurement gets texts not seen before: spaCy's tokenizer caches what it has tokenized.
    # (Runs of symbols like "<<<<" are left out: after cleaning they are 2,000 characters of one "word", which
    # spaCy's tokenizer splits in time quadratic in that word's length -- bounded by max_chars, not by this fix.)
    names = ["script runs", "style and script", "unclosed tags", "unclosed attributes", "nested comments", "mixed"]
    calls = iter(range(10**6))

    def run(size: int) -> float:
        texts = [_adversarial(size)[name] + f" {next(calls)}" for name in names]
        return _seconds(lambda: clean_behaviour_texts([t + f" {next(calls)}" for t in texts]))

    clean_behaviour_texts(["load the tokenizer"])
    small = run(16_000)
    for size in (64_000, 1 << 20):
        took = run(size)
        assert took <= 5 * small + 0.05, f"{size} chars: {took:.3f}s vs 16,000 chars: {small:.3f}s"


def test_raw_input_is_capped_before_cleaning():
    from mmrec.encoders.preprocess import RAW_CHARS_PER_CHAR

    config = CleanConfig(max_chars=100)
    cap = 100 * RAW_CHARS_PER_CHAR
    # Whitespace beyond the raw cap is never read: the word after it is not in the output.
    assert clean_text("start" + " " * cap + "end", config) == "start"
    # Within the cap the output is the old one.
    assert clean_text("start" + " " * 50 + "end", config) == "start end"
    assert len(clean_text("word " * 10**6, config)) <= 100
