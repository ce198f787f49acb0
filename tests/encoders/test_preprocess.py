import pytest

from mmrec.encoders import CleanConfig, clean_text, extract_keyphrases


def test_clean_text_strips_html_controls_and_whitespace():
    raw = "  <p>Star&nbsp;Wars &amp; <b>Jedi</b></p>\x00\x07\r\n\t(1977) <script>alert(1)</script> "
    assert clean_text(raw) == "Star Wars & Jedi (1977)"


def test_clean_text_handles_missing_values():
    assert clean_text(None) == "" and clean_text(float("nan")) == ""


def test_long_text_is_cut_at_the_stated_limit_on_a_word_boundary():
    text = "word " * 1000
    cleaned = clean_text(text, CleanConfig(max_chars=100))
    assert len(cleaned) <= 100 and cleaned.endswith("word")
    with pytest.raises(ValueError, match="max_chars"):
        CleanConfig(max_chars=0)


def test_keyphrases_of_reviews_and_tags():
    phrases = extract_keyphrases([
        "Harrison Ford shines in this space opera",
        "<i>Highly</i> quotable",
        "Christopher Nolan's best film, with a great soundtrack",
        "   ",
    ])
    assert "harrison ford" in phrases[0] and "space opera" in phrases[0]
    assert phrases[1] == ["highly quotable"]
    assert any("nolan" in p for p in phrases[2]) and "great soundtrack" in phrases[2]
    assert phrases[3] == []


def test_behaviour_texts_are_cleaned_with_the_spacy_tokenizer():
    from mmrec.encoders import clean_behaviour_texts

    raw = ["Tradition!", "Oscar (Best Actress)", "sci-fi", "<b>not</b> funny :)", "see http://example.com", None]
    assert clean_behaviour_texts(raw) == [
        "tradition", "oscar best actress", "sci-fi", "not funny", "see", ""]


def test_behaviour_text_case_does_not_change_the_embedding(text_encoder):
    # Lower-casing merges cache entries only because the default encoder is uncased: check that it is.
    a, b = text_encoder.encode(["Pixar", "pixar"])
    assert float(a @ b) > 0.9999


def test_a_single_string_is_refused_not_read_character_by_character():
    from mmrec.encoders import clean_behaviour_texts

    with pytest.raises(ValueError, match="not a single string"):
        extract_keyphrases("A great sci-fi movie")
    with pytest.raises(ValueError, match="not a single string"):
        clean_behaviour_texts("great sci-fi")
