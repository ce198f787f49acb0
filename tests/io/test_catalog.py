"""Reading catalogues: rows that do not fit the header are errors naming the line, never a shifted table."""

from __future__ import annotations

import pytest

from mmrec.io.catalog import read_catalog


def test_extra_field_in_first_row_names_the_line(tmp_path):
    # pandas alone would take item_id as a row index and make the titles the ids, then exit happily
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,genres\n1,Toy Story (1995),Animation|Comedy,EXTRA\n2,Jumanji (1995),Adventure\n")
    with pytest.raises(ValueError, match=r"items.csv: line 2 has 4 fields but the header has 3; quote fields"):
        read_catalog(path)


def test_quoted_separator_is_one_field(tmp_path):
    path = tmp_path / "items.tsv"
    path.write_text('item_id\ttitle\n1\t"Toy\tStory"\n2\tJumanji\n')
    rows = read_catalog(path)
    assert [(r.item_id, r.row) for r in rows] == [("1", 1), ("2", 2)]
    assert rows[0].title.split() == ["Toy", "Story"]


def test_json_array_catalogue_keeps_long_integer_ids_exact(tmp_path):
    path = tmp_path / "items.json"
    path.write_text('[{"item_id": 12345678901234567890123, "title": "Heat (1995)"}, {"item_id": 7, "title": "Sabrina"}]')
    rows = read_catalog(path)
    assert [r.item_id for r in rows] == ["12345678901234567890123", "7"]
    assert rows[0].title == "Heat (1995)"


def test_default_text_leaves_out_id_columns_and_the_image_path_and_explicit_columns_are_honoured(tmp_path):
    # README: default text columns are every column except `image_path` and `*_id`
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,brand_id,genres,image_path\n"
                    "1,Toy Story (1995),BRAND4242,Animation|Comedy,posters/tt0114709.jpg\n")
    (row,) = read_catalog(path)
    assert row.text == "Toy Story (1995). genres: Animation, Comedy"
    assert row.image == tmp_path / "posters" / "tt0114709.jpg"
    assert "BRAND4242" not in row.text and "brand_id" not in row.text and "tt0114709" not in row.text
    assert row.title == "Toy Story (1995)"
    (row,) = read_catalog(path, text_columns=["brand_id", "genres"], use_images=False)
    assert row.text == "BRAND4242. genres: Animation, Comedy" and row.title == "BRAND4242"
    (row,) = read_catalog(path, text_columns=["title"], use_images=False)
    assert row.text == "Toy Story (1995)"


def test_empty_or_wrongly_separated_catalogue_names_the_problem(tmp_path):
    from mmrec.embed import EmbedConfig, embed_catalog

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: the file is empty"):
        read_catalog(tmp_path / "empty.csv")
    (tmp_path / "tabs.csv").write_text("item_id\ttitle\n1\tToy Story (1995)\n")
    with pytest.raises(ValueError, match="no 'item_id' column .* is the file tab-separated\\? name it .tsv"):
        read_catalog(tmp_path / "tabs.csv")
    # an invalid catalogue fails before the store folder is created
    with pytest.raises(ValueError, match="tab-separated"):
        embed_catalog(tmp_path / "tabs.csv", tmp_path / "store", EmbedConfig(use_images=False))
    assert not (tmp_path / "store").exists()
    with pytest.raises(ValueError, match=r"text_columns must be a list of column names, not the string 'title'"):
        EmbedConfig(text_columns="title")


def test_pandas_default_json_catalogue_is_read_by_column(tmp_path):
    import pandas as pd

    # DataFrame.to_json's default orient: {"column": {"row": value}} on one line
    pd.DataFrame({"item_id": ["1", "2"], "title": ["Toy Story (1995)", "Jumanji (1995)"]}).to_json(tmp_path / "c.json")
    rows = read_catalog(tmp_path / "c.json")
    assert [(r.item_id, r.title) for r in rows] == [("1", "Toy Story (1995)"), ("2", "Jumanji (1995)")]


@pytest.mark.parametrize("columns", [None, ["Tags", "title"], ["title", "genres"]])
def test_tag_columns_made_item_text_are_warned_about_at_read_time(columns, tmp_path, recwarn):
    # training only spots a `tags: ...` field after the first column; here every tag column is seen, first included
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,genres,Tags\n1,Toy Story (1995),Animation,pixar|fun\n")
    (row,) = read_catalog(path, text_columns=columns, use_images=False)
    leaking = [w for w in recwarn if "become item text" in str(w.message)]
    if columns == ["title", "genres"]:
        assert not leaking and "pixar" not in row.text
    else:
        assert "pixar" in row.text
        (warning,) = leaking
        assert "['Tags']" in str(warning.message)
        assert f"--text-columns {'title,genres' if columns is None else 'title'} " in str(warning.message)


def test_cli_prints_library_warnings_as_warning_lines(tmp_path, capsys, monkeypatch):
    from mmrec.cli import main

    path = tmp_path / "items.csv"
    path.write_text("item_id,title,tags\n1,Toy Story (1995),pixar\n")
    from mmrec.embed import EmbedReport

    # the real catalogue reader, no encoder: the warning is raised while reading
    monkeypatch.setattr("mmrec.embed.embed_catalog", lambda *a, **k: (read_catalog(path), EmbedReport())[1])
    monkeypatch.delenv("MMREC_DEBUG", raising=False)
    assert main(["embed", str(path), "--store", str(tmp_path / "store"), "--no-images"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {path}: text column(s) ['tags'] become item text") and "UserWarning" not in err


@pytest.mark.parametrize("name, body", [("items.csv", b"item_id,title\n1,Toy Story\n2,Caf\xe9 Society\n"),
                                        # old Mac line ends: the line count must not read it as one line
                                        ("items.csv", b"item_id,title\r1,Toy Story\r2,Caf\xe9 Society\r"),
                                        ("items.csv", b"item_id,title\r\n1,Toy Story\r\n2,Caf\xe9 Society\r\n"),
                                        ("items.jsonl", b'{"item_id": "1", "title": "Toy Story"}\n'
                                                        b'{"item_id": "2", "title": "Caf\xe9 Society"}\n')])
def test_a_file_that_is_not_utf8_is_an_error_naming_file_and_line(name, body, tmp_path):
    from mmrec.io.tables import read_table as read_any_table

    path = tmp_path / name
    path.write_bytes(body)  # Latin-1 "é"
    expected = rf"{name}: line {3 if name.endswith('.csv') else 2} \(byte 0xe9\) is not UTF-8 text; save the file as UTF-8"
    for read in (read_catalog, read_any_table):
        with pytest.raises(ValueError, match=expected):
            read(path)
