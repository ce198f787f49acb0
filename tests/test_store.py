"""The store's own guarantees: opening it never waits for a writer, a missing table is created on opening."""

from __future__ import annotations

import sqlite3

import pytest

from mmrec.store import DB_NAME, Store


def test_opening_a_store_does_not_wait_for_another_process_writing(tmp_path):
    Store(tmp_path / "s").close()
    writer = sqlite3.connect(tmp_path / "s" / DB_NAME, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # e.g. a long `refresh --rebuild` holding the write lock
    writer.execute("INSERT INTO meta VALUES ('uncommitted', 'yes')")
    try:
        # the schema set-up used to take the write lock on every open: this waited 30 s, then failed "locked"
        store = Store(tmp_path / "s", create=False)
        assert store.get_meta("schema_version") == "1" and store.get_meta("uncommitted") is None
        assert store.item_ids() == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_store_missing_a_table_gets_it_on_opening(tmp_path):
    Store(tmp_path / "s").close()
    with sqlite3.connect(tmp_path / "s" / DB_NAME) as db:
        db.execute("DROP TABLE text_cache")
    store = Store(tmp_path / "s")
    assert store.cached_texts(["k"]) == {}


def test_a_file_that_is_not_a_database_is_an_error_naming_it(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / DB_NAME).write_bytes(b"garbage, not SQLite" * 200)
    # before: sqlite3.DatabaseError "file is not a database", naming no file
    with pytest.raises(ValueError, match=str(tmp_path / "s" / DB_NAME)):
        Store(tmp_path / "s", create=False)


def test_the_current_model_is_a_generation_each_install_advances(tmp_path):
    store = Store(tmp_path / "s")
    assert store.current_model() == (0, None)
    assert store.install_model("a") == 1 and store.install_model("a") == 2
    assert store.current_model() == (2, "a")
