"""A corpus of bad (and oddly spelled) inputs at every entry point: the input files (catalogue, interactions, context
events, refresh events, in CSV/TSV/JSON-lines/Parquet), every subcommand's options and the Python API's arguments.

Each case states its outcome class and the test checks it exactly:

- ``error``: a clear error. On the command line exit 1 or 2 with an ``error:`` line; in Python ``ValueError``,
  ``KeyError`` or ``FileNotFoundError``. Its message must hold the case's substring (the file, row, field, option or
  argument at fault). Any other exception fails the case.
- ``fallback``: the documented fallback: rows rejected with reasons (exit 3 on the command line), context rows
  skipped and counted, repeated rows counted once, unknown users scored as cold users. The reasons must hold the
  case's substring.
- ``valid``: accepted (exit 0); some cases check what was read.

The model is a small one trained once for this module (60 movies, users 1-65, one epoch: seconds); every case that
writes works on its own copy of the store.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store
from mmrec.cli import main
from mmrec.data import ItemIndex, load_interactions
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.encoders.precision import resolve_device
from mmrec.io.values import id_string
from mmrec.serve.refresh import refresh_store
from mmrec.train.config import TrainConfig
from mmrec.train.data import load_training_data
from mmrec.train.jobs import evaluate_store, train_store

from .conftest import copy_store, embed_text_only, write_movielens_slice

ERRORS = (ValueError, KeyError, FileNotFoundError)
USER, ITEM, ITEM2 = "1", "1", "32"  # a trained user and two stored items of the slice


# -- the trained store ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slice_store(tmp_path_factory, text_encoder):
    """``(folder, store)``: the 60 most-rated movies, users 1-65 (user 62 tagged some), one epoch, no new-item
    calibration: what the cases need is a model with an ``interaction`` and a ``tag`` event, trained in seconds."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("bad-inputs"), n_items=60, max_user=65)
    store = embed_text_only(folder, folder / "store", text_encoder)
    shutil.copytree(store, folder / "untrained")
    train_store(store, folder / "interactions.csv", folder / "tags.csv",
                TrainConfig(epochs=1, show_progress=False, new_item_neighbours=0, new_item_recall_ratio=0.0,
                            new_item_bias_grid=()), log=None, text_encoder=text_encoder)
    rec = Recommender.load(store, device="cpu")
    assert rec.text_events == ("tag",) and {USER, "62"} <= set(rec.store.get_users()), "the slice changed"
    rec.store.close()
    return folder, store


@pytest.fixture(scope="module")
def shared_rec(slice_store, text_encoder, tmp_path_factory):
    """A Recommender on a module copy of the store, for the API cases (those that succeed write to this copy)."""
    store = copy_store(slice_store[1], tmp_path_factory.mktemp("bad-inputs-api") / "store")
    rec = Recommender.load(store, device="cpu")
    rec.folder._text_encoder = text_encoder
    return rec


@dataclass
class Ctx:
    """What a case runs against: files written into ``tmp``, the slice's folder and trained store."""

    tmp: Path
    folder: Path
    trained: Path
    request: Any
    _rec: Recommender | None = None

    def write(self, name: str, content) -> Path:
        """``content`` (str, bytes, or a DataFrame written in the format the suffix names) as ``tmp/name``."""
        path = self.tmp / name
        if isinstance(content, pd.DataFrame):
            content.to_parquet(path, index=False)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def store(self) -> Path:
        """A fresh copy of the trained store, for a case that may write."""
        return copy_store(self.trained, self.tmp / "store")

    def untrained(self) -> Path:
        return copy_store(self.folder / "untrained", self.tmp / "untrained")

    @property
    def rec(self) -> Recommender:
        return self.request.getfixturevalue("shared_rec")

    @property
    def enc(self):
        return self.request.getfixturevalue("text_encoder")

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(Store(self.trained, create=False).item_ids())


@pytest.fixture
def ctx(slice_store, tmp_path, request, monkeypatch, text_encoder) -> Ctx:
    # refresh_store loads its own Recommender, whose tag events need the text encoder: lend it the loaded one
    monkeypatch.setattr("mmrec.encoders.text.TextEncoder", lambda *args, **kwargs: text_encoder)
    return Ctx(tmp_path, slice_store[0], slice_store[1], request)


# -- running a case ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cli:
    code: int
    err: str


def cli(argv: list) -> Cli:
    """``mmrec ARGV`` in this process: its exit status (usage errors included) and its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit:
            code = exit.code
    return Cli(code, err.getvalue())


@dataclass(frozen=True)
class Case:
    outcome: str  # "error" | "fallback" | "valid"
    expect: str  # substring of the error message, or of the fallback's reasons
    run: Callable[[Ctx], Any]
    fallback: Callable[[Any], str] | None = None  # the fallback's reasons in a result ("" when there was none)
    check: Callable[[Any, Ctx], None] | None = None  # more checks on the result (or the Ctx, after an error)


CASES: list = []


def add(case_id: str, outcome: str, expect: str, run, *, fallback=None, check=None, xfail: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    CASES.append(pytest.param(Case(outcome, expect, run, fallback, check), id=case_id, marks=marks))


# -- input files: catalogue (embed_catalog) ---------------------------------------------------------------------
def embed(name: str, content, config: EmbedConfig | None = None):
    def run(c: Ctx):
        path = c.write(name, content)
        return embed_catalog(path, c.tmp / "emb", config or EmbedConfig(use_images=False), text_encoder=c.enc)
    return run


def rejected_items(report) -> str:
    return "; ".join(f"item {r['item_id']} row {r['row']}: {r['reason']}" for r in report.rejected + report.warnings)


def nothing_written(result, c: Ctx) -> None:
    assert not (c.tmp / "emb").exists(), "a refused catalogue created the store folder"


def stored_ids(*ids):
    def check(result, c: Ctx):
        assert Store(c.tmp / "emb", create=False).item_ids() == list(ids)
    return check


def cat(case_id, outcome, expect, name, content, config=None, **kw):
    kw.setdefault("check", nothing_written if outcome == "error" else None)
    add(f"catalogue-{case_id}", outcome, expect, embed(name, content, config), fallback=rejected_items, **kw)


cat("no-item_id-column", "error", "no 'item_id' column", "items.csv", "title\nToy Story\n")
cat("tsv-named-csv", "error", "tab-separated", "items.csv", "item_id\ttitle\n1\tToy Story\n")
cat("empty-file", "error", "the file is empty", "items.csv", "")
cat("duplicate-ids", "error", "item_id '7' appears more than once (data rows [1, 3])", "items.csv",
    "item_id,title\n7,A\n8,B\n 7 ,C\n")
cat("blank-id", "error", "empty item_id at data row(s) [2]", "items.csv", "item_id,title\n7,A\n  ,B\n")
cat("non-utf8", "error", "line 3 (byte 0xe9) is not UTF-8", "items.csv", b"item_id,title\n7,A\n8,caf\xe9\n")
cat("extra-field", "error", "line 3, saw 3", "items.csv",
    "item_id,title\n7,A\n8,B,oops\n")
cat("jsonl-bad-line", "error", "line 2 is not valid JSON", "items.jsonl", '{"item_id": "7", "title": "A"}\n{oops\n')
cat("jsonl-array-line", "error", "line 2 is list, not a JSON object", "items.jsonl",
    '{"item_id": "7", "title": "A"}\n["8", "B"]\n')
cat("json-array-of-strings", "error", "element 0 is str, not a JSON object", "items.json", '["7", "A"]')
cat("unknown-format", "error", "unsupported catalogue format '.xlsx'", "items.xlsx", "item_id,title\n7,A\n")
cat("unknown-text-column", "error", "text column(s) ['plot'] not found", "items.csv", "item_id,title\n7,A\n",
    EmbedConfig(use_images=False, text_columns=["plot"]))
cat("item-without-text", "fallback", "item 8 row 2", "items.csv", "item_id,title\n7,A\n8,\n")
cat("spaced-ids", "valid", "", "items.csv", "item_id,title\n 7 ,A\n8 ,B\n", check=stored_ids("7", "8"))
cat("extra-columns", "valid", "", "items.csv", "item_id,title,imdb_id,budget\n7,A,tt1,10\n",
    EmbedConfig(use_images=False, text_columns=["title"]), check=stored_ids("7"))
cat("parquet-int-ids", "valid", "", "items.parquet", pd.DataFrame({"item_id": [7, 8], "title": ["A", "B"]}),
    check=stored_ids("7", "8"))
cat("jsonl-float-ids", "valid", "", "items.jsonl", '{"item_id": 7.0, "title": "A"}\n{"item_id": 8, "title": "B"}\n',
    check=stored_ids("7", "8"))
add("catalogue-missing-file", "error", "catalogue file not found",
    lambda c: embed_catalog(c.tmp / "nope.csv", c.tmp / "emb", EmbedConfig(use_images=False), text_encoder=c.enc),
    check=nothing_written)


def embed_with_missing_image(c: Ctx):
    path = c.write("items.csv", "item_id,title,image_path\n7,A,posters/7.jpg\n")
    return embed_catalog(path, c.tmp / "emb", EmbedConfig(), text_encoder=c.enc,
                         image_encoder=c.request.getfixturevalue("image_encoder"))


add("catalogue-missing-image-is-text-only", "fallback", "posters/7.jpg", embed_with_missing_image,
    fallback=rejected_items, check=lambda report, c: report.text_only == 1 or pytest.fail(str(report)))


# -- input files: interactions (load_interactions: what train and evaluate read) ---------------------------------
def interactions(name: str, content, **kwargs):
    def run(c: Ctx):
        return load_interactions(c.write(name, content), ItemIndex(c.item_ids), **kwargs)
    return run


def dropped_or_repeated(inter) -> str:
    return ("; ".join(f"{n} {what}" for n, what in ((inter.n_dropped, "dropped"), (inter.n_repeated, "repeated"))
                      if n))


def read_users(*user_ids, items=None):
    def check(inter, c: Ctx):
        assert inter.user_ids == user_ids
        if items is not None:
            assert inter.items.ids_of(inter.item) == items
    return check


def inter(case_id, outcome, expect, name, content, **kw):
    run_kwargs = kw.pop("kwargs", {})
    add(f"interactions-{case_id}", outcome, expect, interactions(name, content, **run_kwargs),
        fallback=dropped_or_repeated, **kw)


H = "user_id,item_id,timestamp\n"
inter("no-timestamp-column", "error", "missing column(s) ['timestamp']", "i.csv", "user_id,item_id\n1,1\n")
inter("semicolons", "error", "semicolon-separated", "i.csv", "user_id;item_id;timestamp\n1;1;5\n")
inter("bad-timestamp", "error", "timestamp: 1 row(s) are missing or not", "i.csv", H + "1,1,5\n1,32,soon\n")
inter("infinite-timestamp", "error", "first data rows [2]", "i.csv", H + "1,1,5\n1,32,inf\n")
inter("timestamp-beyond-int64", "error", "within the int64 range", "i.csv", H + "1,1,5\n1,32,1e300\n")
inter("blank-user", "error", "user_id: missing value in 1 row(s), first data rows [2]", "i.csv",
      H + "1,1,5\n ,32,6\n")
inter("missing-item", "error", "item_id: missing value", "i.csv", H + "1,,5\n")
inter("unknown-item", "error", "data row 2 (item_id '999999')", "i.csv", H + "1,1,5\n1,999999,6\n")
inter("unknown-item-dropped", "fallback", "1 dropped", "i.csv", H + "1,1,5\n1,999999,6\n",
      kwargs={"unknown_items": "drop"})
inter("bad-unknown-items-value", "error", "unknown_items: expected 'error' or 'drop'", "i.csv", H + "1,1,5\n",
      kwargs={"unknown_items": "skip"})
inter("repeated-rows", "fallback", "1 repeated", "i.csv", H + "1,1,5\n1,1,5\n1,32,6\n")
inter("non-utf8", "error", "line 2 (byte 0xff) is not UTF-8", "i.csv", b"user_id,item_id,timestamp\n\xff,1,5\n")
inter("empty-file", "error", "the file is empty", "i.csv", "")
inter("extra-field", "error", "line 3, saw 4", "i.csv", H + "1,1,5\n1,32,6,x\n")
inter("extra-column", "valid", "", "i.csv", "user_id,item_id,timestamp,rating\n1,1,5,4.5\n", check=read_users("1"))
inter("spaced-ids", "valid", "", "i.csv", H + " 1 , 32 ,5\n1,1 ,6\n", check=read_users("1", items=("32", "1")))
inter("date-strings", "valid", "", "i.csv", H + "1,1,2020-01-01\n1,32,2020-01-02T00:00:00Z\n",
      check=lambda r, c: r.timestamp.tolist() == [1577836800, 1577923200] or pytest.fail(str(r.timestamp)))
inter("tsv", "valid", "", "i.tsv", "user_id\titem_id\ttimestamp\n1\t1\t5\n", check=read_users("1"))
inter("jsonl-null-user", "error", "user_id: missing value in 1 row(s), first data rows [2]", "i.jsonl",
      '{"user_id": 1, "item_id": 1, "timestamp": 5}\n{"user_id": null, "item_id": 32, "timestamp": 6}\n')
inter("jsonl-floats-widened", "valid", "", "i.jsonl",
      '{"user_id": 1.0, "item_id": 1, "timestamp": 5.9}\n{"user_id": 2, "item_id": 32, "timestamp": 6}\n',
      check=read_users("1", "2"))
inter("jsonl-huge-timestamp", "error", "within the int64 range", "i.jsonl",
      '{"user_id": 1, "item_id": 1, "timestamp": 100000000000000000000000}\n')
inter("parquet-datetimes", "valid", "", "i.parquet",
      pd.DataFrame({"user_id": ["1"], "item_id": ["1"], "timestamp": pd.to_datetime(["2020-01-01"])}),
      check=lambda r, c: r.timestamp.tolist() == [1577836800] or pytest.fail(str(r.timestamp)))
inter("parquet-no-user-column", "error", "missing column(s) ['user_id']", "i.parquet",
      pd.DataFrame({"item_id": ["1"], "timestamp": [5]}))
inter("parquet-string-timestamps", "error", "timestamp", "i.parquet",
      pd.DataFrame({"user_id": ["1"], "item_id": ["1"], "timestamp": ["whenever"]}))
inter("header-only", "valid", "", "i.csv", H, check=read_users())


def train_with(interactions_content=None, context=None, name="i.csv", **kwargs):
    """train_store on a copy of the trained store: every case here must fail before training."""
    def run(c: Ctx):
        path = (c.write(name, interactions_content) if interactions_content is not None
                else c.folder / "interactions.csv")
        ctx_path = c.write("ctx.csv", context) if context is not None else None
        return train_store(c.store(), path, ctx_path, TrainConfig(epochs=1, show_progress=False), log=None,
                           text_encoder=c.enc, **kwargs)
    return run


add("train-bad-timestamp-names-file", "error", "i.csv: timestamp", train_with(H + "1,1,5\n1,32,soon\n"))
add("train-unknown-item", "error", "pass unknown_items='drop'", train_with(H + "1,1,5\n1,999999,6\n"))
add("train-unknown-items-value", "error", "unknown_items", train_with(unknown_items="maybe"))
add("train-context-without-text-column", "error", "context events need user_id, item_id, timestamp and one of",
    train_with(context="user_id,item_id,timestamp\n1,1,5\n"))
add("train-context-missing-columns", "error", "lacks column(s) ['timestamp (or seq_index)']",
    train_with(context="user_id,item_id,tag\n1,1,funny\n"))
add("train-missing-store", "error", "",
    lambda c: train_store(c.tmp / "nostore", c.folder / "interactions.csv", log=None))
add("train-missing-interactions", "error", "no such file",
    lambda c: train_store(c.store(), c.tmp / "nope.csv", log=None))
add("train-config-zero-epochs", "error", "epochs must be >= 1", lambda c: TrainConfig(epochs=0))


# -- input files: context events (skipped rows are counted, as training reports them) ----------------------------
def context(name: str, content):
    def run(c: Ctx):
        store = Store(c.trained, create=False)
        try:
            return load_training_data(store, c.folder / "interactions.csv", c.write(name, content), c.enc)
        finally:
            store.close()
    return run


def skipped(data) -> str:
    return f"{data.n_context_dropped} skipped" if data.n_context_dropped else ""


T = "user_id,item_id,tag,timestamp\n"
for case_id, outcome, expect, name, content in [
    ("bad-timestamp", "fallback", "1 skipped", "t.csv", T + "62,110,epic,1528152532\n62,110,epic,soon\n"),
    ("empty-text", "fallback", "1 skipped", "t.csv", T + "62,110,epic,1528152532\n62,110, ... ,1528152533\n"),
    ("unknown-user", "fallback", "1 skipped", "t.csv", T + "62,110,epic,1528152532\nnobody,110,epic,1528152533\n"),
    ("unknown-item", "fallback", "1 skipped", "t.csv", T + "62,110,epic,1528152532\n62,999999,epic,1528152533\n"),
    ("no-text-column", "error", "one of ('text', 'tag', 'review', 'query')", "t.csv",
     "user_id,item_id,timestamp\n62,110,1528152532\n"),
    ("non-utf8", "error", "line 2 (byte 0xe9) is not UTF-8", "t.csv", T.encode() + b"62,110,caf\xe9,1528152532\n"),
    ("extra-field", "error", "line 2 has 5 fields", "t.csv", T + "62,110,epic,1528152532,x\n"),
    ("jsonl", "valid", "", "t.jsonl", '{"user_id": 62, "item_id": 110, "tag": "epic", "timestamp": 1528152532}\n'),
    ("jsonl-not-an-object", "error", "line 1 is int, not a JSON object", "t.jsonl", "62\n"),
    ("parquet-review", "valid", "", "t.parquet",
     pd.DataFrame({"user_id": ["62"], "item_id": ["110"], "review": ["epic"], "timestamp": [1528152532]})),
    ("spaced-ids", "valid", "", "t.csv", T + " 62 , 110 ,epic,1528152532\n"),
]:
    add(f"context-{case_id}", outcome, expect, context(name, content), fallback=skipped)


# -- input files: refresh events (rows rejected one by one, with the reason) -----------------------------------
def refresh(name: str, content):
    def run(c: Ctx):
        return refresh_store(c.store(), c.write(name, content))
    return run


def rejected_rows(report) -> str:
    return "; ".join(f"row {r['row']}: {r['reason']}" for r in report.rejected)


def applied(n: int):
    def check(report, c: Ctx):
        assert report.events_applied == n, report
    return check


E = "user_id,item_id,timestamp,event,text\n"
for case_id, outcome, expect, name, content, check in [
    ("unknown-item", "fallback", "row 2: unknown item_id", "e.csv", E + "1,1,2000000000,interaction,\n"
     "1,999999,2000000001,interaction,\n", applied(1)),
    ("bad-timestamp", "fallback", "row 1: timestamp is missing, unreadable", "e.csv",
     E + "1,1,tomorrow,interaction,\n", applied(0)),
    ("timestamp-beyond-int64", "fallback", "row 1: timestamp", "e.csv", E + "1,1,1e300,interaction,\n", None),
    ("unknown-event", "fallback", "row 1: unknown event; known events: ['interaction', 'tag']", "e.csv",
     E + "1,1,2000000000,click,\n", None),
    ("tag-without-text", "fallback", "row 1: no text", "e.csv", E + "1,1,2000000000,tag,\n", None),
    ("text-on-interaction", "fallback", "row 1: text on an event that carries none", "e.csv",
     E + "1,1,2000000000,interaction,great\n", None),
    ("blank-user", "fallback", "row 1: empty user_id", "e.csv", E + "  ,1,2000000000,interaction,\n", None),
    ("missing-columns", "error", "lacks column(s) ['timestamp (or seq_index)']", "e.csv", "user_id,item_id\n1,1\n", None),
    ("non-utf8", "error", "line 2 (byte 0xe9) is not UTF-8", "e.csv", E.encode() + b"1,1,5,tag,caf\xe9\n", None),
    ("empty-file", "error", "the file is empty", "e.csv", "", None),
    ("extra-field", "error", "line 2 has 6 fields", "e.csv", E + "1,1,2000000000,interaction,,x\n", None),
    ("jsonl-bad-line", "error", "line 1 is not valid JSON", "e.jsonl", "{'user_id': 1}\n", None),
    ("valid", "valid", "", "e.csv", E + "1,1,2000000000,interaction,\n1,32,2000000001,tag,epic\n", applied(2)),
    ("tags-file", "valid", "", "e.csv", T + "1,32,epic,2000000000\n", applied(1)),
    ("spaced-ids-and-dates", "valid", "", "e.csv", E + " 1 , 32 ,2033-05-18T03:33:20Z,interaction,\n", applied(1)),
    ("repeated-rows", "valid", "", "e.csv", E + "1,1,2000000000,interaction,\n1,1,2000000000,interaction,\n",
     applied(1)),
    ("header-only", "valid", "", "e.csv", E, applied(0)),
    ("jsonl-float-ids", "valid", "", "e.jsonl", '{"user_id": 1.0, "item_id": 32.0, "timestamp": 2000000000}\n',
     applied(1)),
    ("jsonl-null-user", "fallback", "row 2: empty user_id", "e.jsonl",
     '{"user_id": 1, "item_id": 32, "timestamp": 2000000000}\n{"user_id": null, "item_id": 32, "timestamp": 1}\n',
     applied(1)),
    ("parquet-datetimes", "valid", "", "e.parquet", pd.DataFrame(
        {"user_id": ["1"], "item_id": ["32"], "timestamp": pd.to_datetime(["2033-05-18"])}), applied(1)),
]:
    add(f"refresh-{case_id}", outcome, expect, refresh(name, content), fallback=rejected_rows, check=check)

add("refresh-missing-file", "error", "no such file", lambda c: refresh_store(c.store(), c.tmp / "nope.csv"))
add("refresh-untrained-store", "error", "", lambda c: refresh_store(c.untrained(), rebuild=True))


# -- command line: every subcommand's bad values ----------------------------------------------------------------
def command(*argv, files: dict | None = None, store: str | None = None):
    """``mmrec ARGV`` with ``{name}`` placeholders: ``{store}`` a copy of the trained store, ``{untrained}``, ``{tmp}``,
    ``{folder}`` the slice's folder, and the ``files`` written into tmp."""
    def run(c: Ctx):
        names = {"tmp": c.tmp, "folder": c.folder}
        if any("{store}" in str(a) for a in argv):
            names["store"] = c.store()
        if any("{untrained}" in str(a) for a in argv):
            names["untrained"] = c.untrained()
        for name, content in (files or {}).items():
            names[name.split(".")[0]] = c.write(name, content)
        return cli([str(a).format(**names) for a in argv])
    return run


def no_new_store(result, c: Ctx) -> None:
    assert not (c.tmp / "new").exists(), "a refused command created the store folder"


CAT = {"items.csv": "item_id,title\n7,A\n"}
EMBED = ("embed", "{items}", "--store", "{tmp}/new", "--no-images")
for case_id, extra, expect in [
    ("batch-size-negative", ["--batch-size", "-1"], "argument --batch-size: expected an integer >= 1, got '-1'"),
    ("batch-size-zero", ["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    ("batch-size-word", ["--batch-size", "many"], "argument --batch-size: expected an integer, got 'many'"),
    ("chunk-size-zero", ["--chunk-size", "0"], "argument --chunk-size: expected an integer >= 1"),
    ("precision", ["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    ("device", ["--device", "banana"], "'banana' is not a device"),
    ("text-columns-empty", ["--text-columns", ","], "argument --text-columns: expected a comma-separated list"),
    ("unknown-option", ["--batch", "4", "--frobnicate"], "unrecognized arguments: --frobnicate"),
]:
    add(f"cli-embed-{case_id}", "error", expect, command(*EMBED, *extra, files=CAT), check=no_new_store)
add("cli-embed-missing-catalogue", "error", "error: catalog ",
    command("embed", "{tmp}/nope.csv", "--store", "{tmp}/new"),
    check=no_new_store)
add("cli-embed-store-is-a-file", "error", "exists and is not a folder",
    command("embed", "{items}", "--store", "{items}", "--no-images", files=CAT))
add("cli-embed-images-root-missing", "error", "--images-root",
    command("embed", "{items}", "--store", "{tmp}/new", "--images-root", "{tmp}/posters", files=CAT),
    check=no_new_store)
add("cli-embed-bad-catalogue", "error", "items.csv: no 'item_id' column",
    command(*EMBED, files={"items.csv": "title\nA\n"}), check=no_new_store)
add("cli-embed-item-without-text", "fallback", "rejected: item 8 (row 2)",
    command(*EMBED, files={"items.csv": "item_id,title\n7,A\n8,\n"}))

TRAIN = ("train", "--store", "{store}", "--interactions", "{folder}/interactions.csv")
for case_id, extra, expect in [
    ("epochs-zero", ["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    ("batch-size-negative", ["--batch-size", "-5"], "argument --batch-size: expected an integer >= 1"),
    ("max-len-zero", ["--max-len", "0"], "argument --max-len: expected an integer >= 1"),
    ("learning-rate-zero", ["--learning-rate", "0"], "argument --learning-rate: expected a number > 0"),
    ("learning-rate-nan", ["--learning-rate", "nan"], "argument --learning-rate: expected a finite number"),
    ("patience-zero", ["--patience", "0"], "argument --patience: expected an integer >= 1"),
    ("seed-negative", ["--seed", "-1"], "argument --seed: expected an integer from 0 to 2**63-1"),
    ("seed-huge", ["--seed", str(2**70)], "argument --seed: expected an integer from 0 to 2**63-1"),
    ("modalities", ["--modalities", "text,sound"], "unknown 'sound'; choose from text, image, id"),
    ("recall-ratio-negative", ["--new-item-recall-ratio", "-0.1"], "--new-item-recall-ratio: expected a number >= 0"),
    ("recall-ratio-nan", ["--new-item-recall-ratio", "nan"], "--new-item-recall-ratio: expected a finite number"),
    ("neighbours-negative", ["--new-item-neighbours", "-1"], "--new-item-neighbours: expected an integer >= 0"),
    ("exposure", ["--new-item-exposure", "boost"], "argument --new-item-exposure: invalid choice: 'boost'"),
    ("unknown-items", ["--unknown-items", "maybe"], "argument --unknown-items: invalid choice: 'maybe'"),
    ("device", ["--device", "cuda:x"], "'cuda:x' is not a device"),
]:
    add(f"cli-train-{case_id}", "error", expect, command(*TRAIN, *extra))
add("cli-train-no-interactions-option", "error", "the following arguments are required: --interactions",
    command("train", "--store", "{tmp}"))
add("cli-train-not-a-store", "error", "not an mmrec store",
    command("train", "--store", "{tmp}", "--interactions", "{folder}/interactions.csv"))
add("cli-train-missing-interactions", "error", "nope.csv: no such file",
    command("train", "--store", "{store}", "--interactions", "{tmp}/nope.csv"))
add("cli-train-bad-timestamp", "error", "i.csv: timestamp: 1 row(s)",
    command("train", "--store", "{store}", "--interactions", "{i}", files={"i.csv": H + "1,1,5\n1,32,soon\n"}))
add("cli-train-unknown-item", "error", "pass --unknown-items drop",
    command("train", "--store", "{store}", "--interactions", "{i}", files={"i.csv": H + "1,999999,5\n"}))

EVALUATE = ("evaluate", "--store", "{store}", "--interactions", "{folder}/interactions.csv")
add("cli-evaluate-device", "error", "'banana' is not a device", command(*EVALUATE, "--device", "banana"))
add("cli-evaluate-unknown-items", "error", "invalid choice: 'skip'", command(*EVALUATE, "--unknown-items", "skip"))
add("cli-evaluate-missing-store", "error", "not an mmrec store",
    command("evaluate", "--store", "{tmp}/nostore", "--interactions", "{folder}/interactions.csv"))
add("cli-evaluate-unknown-event", "error", "unknown event name(s) ['click']",
    command("evaluate", "--store", "{store}", "--interactions", "{i}",
            files={"i.csv": "user_id,item_id,timestamp,event\n1,1,5,click\n"}))
add("cli-evaluate-untrained-store", "error", "error: ",
    command("evaluate", "--store", "{untrained}", "--interactions", "{folder}/interactions.csv"))

add("cli-refresh-nothing-to-do", "error", "give --events FILE, --rebuild, or both",
    command("refresh", "--store", "{store}"))
add("cli-refresh-missing-events", "error", "--events",
    command("refresh", "--store", "{store}", "--events", "{tmp}/x.csv"))
add("cli-refresh-missing-columns", "error", "lacks column(s) ['timestamp (or seq_index)']",
    command("refresh", "--store", "{store}", "--events", "{e}", files={"e.csv": "user_id,item_id\n1,1\n"}))
add("cli-refresh-rejected-rows", "fallback", "rejected: row 2 (user 1, item 999999): unknown item_id",
    command("refresh", "--store", "{store}", "--events", "{e}",
            files={"e.csv": H + "1,1,2000000000\n1,999999,2000000001\n"}))
add("cli-refresh-valid", "valid", "", command("refresh", "--store", "{store}", "--events", "{e}", "--rebuild",
                                              files={"e.csv": H + "1,1,2000000000\n"}))

REPORT = ("report", "--store", "{store}", "--interactions", "{folder}/interactions.csv", "--out", "{tmp}/out")
for case_id, extra, expect in [
    ("seeds-negative", ["--seeds", "0,-1"], "argument --seeds: expected comma-separated integers from 0"),
    ("seeds-words", ["--seeds", "a,b"], "argument --seeds: expected comma-separated integers"),
    ("jobs-zero", ["--jobs", "0"], "argument --jobs: expected an integer >= 1, got '0'"),
    ("threads-zero", ["--threads", "0"], "argument --threads: expected an integer >= 1"),
    ("epochs-zero", ["--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    ("patience-negative", ["--patience", "-3"], "argument --patience: expected an integer >= 1"),
    ("baseline-epochs-zero", ["--baseline-epochs", "0"], "argument --baseline-epochs: expected an integer >= 1"),
    ("baseline-patience-negative", ["--baseline-patience", "-2"], "argument --baseline-patience: expected an integer"),
    ("exposure-ratio-negative", ["--exposure-ratio", "-1"], "argument --exposure-ratio: expected a number >= 0"),
    ("exposure-ratio-inf", ["--exposure-ratio", "inf"], "argument --exposure-ratio: expected a finite number"),
    ("models", ["--models", "pop,foo"], "unknown 'foo'"),
    ("protocols", ["--protocols", "bar"], "unknown 'bar'; choose from"),
    ("ours", ["--ours", "pop"], "unknown 'pop'; choose our model's item signals"),
]:
    add(f"cli-report-{case_id}", "error", expect, command(*REPORT, *extra),
        check=lambda r, c: not (c.tmp / "out").exists() or pytest.fail("report wrote its folder"))
add("cli-report-missing-reference", "error", "--reference", command(*REPORT, "--reference", "{tmp}/ref.md"))

for case_id, extra, expect in [
    ("epochs-zero", ["--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    ("users-empty", ["--users", ","], "argument --users: expected a comma-separated list"),
    ("missing-data", ["--data", "{tmp}/nodata"], "--data"),
]:
    add(f"cli-demo-{case_id}", "error", expect, command("demo", "--store", "{tmp}/new", *extra), check=no_new_store)
add("cli-no-subcommand", "error", "the following arguments are required: command", lambda c: cli([]))


# -- Python API ------------------------------------------------------------------------------------------------
def api(fn: Callable[[Recommender], Any], **kw):
    return lambda c: fn(c.rec)


def cold(user_id):
    """The fallback of an unknown user: scored from the model's initial state."""
    def reasons(result) -> str:
        return "" if Store(result[1], create=False).get_users([user_id]) else f"cold user {user_id}"
    return reasons


def same_as(reference: Callable[[Recommender], Any]):
    def check(result, c: Ctx):
        np.testing.assert_array_equal(np.asarray(result, dtype=object), np.asarray(reference(c.rec), dtype=object))
    return check


add("api-resolve-device", "error", "device='banana' is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
    lambda c: resolve_device("banana"))
add("api-resolve-device-meta", "error", "device='meta' is not a device", lambda c: resolve_device("meta"))
add("api-id-string-blank", "error", "user_id must be a non-empty string", lambda c: id_string("   ", "user_id"))
add("api-load-device", "error", "device='banana'", lambda c: Recommender.load(c.trained, device="banana"))
add("api-load-device-index", "error", "'cuda:x'", lambda c: Recommender.load(c.trained, device="cuda:x"))
add("api-load-missing-store", "error", "", lambda c: Recommender.load(c.tmp / "nostore", device="cpu"))
add("api-load-untrained-store", "error", "", lambda c: Recommender.load(c.untrained(), device="cpu"))

for case_id, outcome, expect, fn, extra in [
    ("item-ids-a-string", "error", "item_ids must be a list", lambda r: r.score(USER, "1"), {}),
    ("both-user-and-history", "error", "give exactly one of user_id or history",
     lambda r: r.score(USER, [ITEM], history=[(ITEM, "interaction", 5)]), {}),
    ("neither", "error", "give exactly one", lambda r: r.score(item_ids=[ITEM]), {}),
    ("unknown-item", "error", "unknown item id(s) ['999999']", lambda r: r.score(USER, [ITEM, "999999"]), {}),
    ("item-a-float", "error", "item id must be a non-empty string or an integer, got 1.5",
     lambda r: r.score(USER, [1.5]), {}),
    ("blank-user", "error", "user_id must be a non-empty string", lambda r: r.score("  ", [ITEM]), {}),
    ("user-a-bool", "error", "user_id must be a non-empty string or an integer, got True",
     lambda r: r.score(True, [ITEM]), {}),
    ("user-a-list", "error", "user_id must be", lambda r: r.score([USER], [ITEM]), {}),
    ("spaced-user", "valid", "", lambda r: r.score(f" {USER} ", [ITEM, ITEM2]),
     {"check": same_as(lambda r: r.score(USER, [ITEM, ITEM2]))}),
    ("integer-ids", "valid", "", lambda r: r.score(int(USER), [np.int64(ITEM), int(ITEM2)]),
     {"check": same_as(lambda r: r.score(USER, [ITEM, ITEM2]))}),
    ("no-items", "valid", "", lambda r: r.score(USER, []), {}),
    ("history-bad-timestamp", "error", "history[1] timestamp must be finite unix seconds",
     lambda r: r.score(history=[(ITEM, "interaction", 5), (ITEM2, "interaction", "soon")], item_ids=[ITEM]), {}),
    ("history-nan-timestamp", "error", "history[0] timestamp", lambda r: r.score(
        history=[(ITEM, "interaction", float("nan"))], item_ids=[ITEM]), {}),
    ("history-short-tuple", "error", "history[0] must be (item_id, event, timestamp[, text])",
     lambda r: r.score(history=[(ITEM, "interaction")], item_ids=[ITEM]), {}),
    ("history-unknown-event", "error", "unknown event 'click'",
     lambda r: r.score(history=[(ITEM, "click", 5)], item_ids=[ITEM]), {}),
    ("history-unknown-item", "error", "unknown item id(s) ['999999']",
     lambda r: r.score(history=[("999999", "interaction", 5)], item_ids=[ITEM]), {}),
    ("history-tag-without-text", "error", "history[0]: the model reads 'tag' events by their text",
     lambda r: r.score(history=[(ITEM, "tag", 5)], item_ids=[ITEM]), {}),
    ("history-date-string", "valid", "", lambda r: r.score(history=[(ITEM, "interaction", "1700000000")],
                                                          item_ids=[ITEM]), {}),
]:
    add(f"api-score-{case_id}", outcome, expect, api(fn), **extra)
add("api-score-unknown-user", "fallback", "cold user nobody",
    lambda c: (c.rec.score("nobody", [ITEM]), c.rec.store.path), fallback=cold("nobody"))

for case_id, outcome, expect, fn, extra in [
    ("k-zero", "error", "k must be a positive integer, got 0", lambda r: r.recommend(USER, k=0), {}),
    ("k-float", "error", "k must be a positive integer, got 2.5", lambda r: r.recommend(USER, k=2.5), {}),
    ("k-bool", "error", "k must be a positive integer, got True", lambda r: r.recommend(USER, k=True), {}),
    ("user-none", "error", "user_id must be", lambda r: r.recommend(None), {}),
    ("spaced-user", "valid", "", lambda r: r.recommend(f"\t{USER} ", k=5),
     {"check": same_as(lambda r: r.recommend(USER, k=5))}),
]:
    add(f"api-recommend-{case_id}", outcome, expect, api(fn), **extra)
add("api-recommend-unknown-user", "fallback", "cold user stranger",
    lambda c: (c.rec.recommend("stranger", k=3), c.rec.store.path), fallback=cold("stranger"))


def observe(*args, **kwargs):
    """``observe`` on a fresh store copy (it writes); returns the user's logged items."""
    def run(c: Ctx):
        rec = Recommender.load(c.store(), device="cpu")
        rec.folder._text_encoder = c.enc
        try:
            rec.observe(*args, **kwargs)
            return {u: [e[1] for e in events] for u, events in rec.store.user_events().items()}
        finally:
            rec.store.close()
    return run


def logged(user_id, item_id):
    def check(logs, c: Ctx):
        assert item_id in logs.get(user_id, []), sorted(logs)
    return check


for case_id, outcome, expect, args, kwargs, check in [
    ("unknown-item", "error", "unknown item id(s) ['999999']", (USER, "999999"), {}, None),
    ("unknown-event", "error", "unknown event 'click'; known events: ['interaction', 'tag']", (USER, ITEM),
     {"event": "click"}, None),
    ("timestamp-word", "error", "timestamp must be finite unix seconds within the int64 range, got 'yesterday'",
     (USER, ITEM), {"timestamp": "yesterday"}, None),
    ("timestamp-inf", "error", "got inf", (USER, ITEM), {"timestamp": float("inf")}, None),
    ("timestamp-beyond-int64", "error", "within the int64 range", (USER, ITEM), {"timestamp": 2**70}, None),
    ("timestamp-bool", "error", "got True", (USER, ITEM), {"timestamp": True}, None),
    ("text-on-interaction", "error", "'interaction' events carry no text in training", (USER, ITEM),
     {"text": "great film"}, None),
    ("tag-without-text", "error", "rows[0]: the model reads 'tag' events by their text", (USER, ITEM),
     {"event": "tag"}, None),
    ("blank-user", "error", "user_id must be a non-empty string", ("", ITEM), {}, None),
    ("spaced-ids", "valid", "", (f" {USER} ", f" {ITEM2}\n"), {"timestamp": 2000000000}, logged(USER, ITEM2)),
    ("new-user", "valid", "", ("newcomer", ITEM), {"timestamp": 2000000000}, logged("newcomer", ITEM)),
    ("tag-with-text", "valid", "", (USER, ITEM2), {"event": "tag", "text": "epic", "timestamp": 2000000000},
     logged(USER, ITEM2)),
]:
    add(f"api-observe-{case_id}", outcome, expect, observe(*args, **kwargs), check=check)


def apply(rows):
    return api(lambda r: r.apply_events(rows))


add("api-apply-events-short-row", "error", "rows[0] must be (user_id, timestamp, item_id, event, text)",
    apply([(USER, 5, ITEM, "interaction")]))
add("api-apply-events-unknown-item", "error", "rows[1]: unknown item id '999999'",
    apply([(USER, 5, ITEM, "interaction", ""), (USER, 6, "999999", "interaction", "")]))
add("api-apply-events-unknown-event", "error", "rows[0]: unknown event 'click'", apply([(USER, 5, ITEM, "click", "")]))
add("api-apply-events-text-mismatch", "error", "rows[0]: the model reads 'tag' events by their text",
    apply([(USER, 5, ITEM, "tag", "")]))
add("api-apply-events-empty", "valid", "", apply([]))
add("api-apply-events-timestamp-word", "error", "rows[0] timestamp",
    apply([(USER, "soon", ITEM, "interaction", "")]))
add("api-apply-events-spaced-user", "valid", "", lambda c: (
    c.rec.apply_events([(f" {USER} ", 2000000000, ITEM2, "interaction", "")]),
    c.rec.store.user_events([f" {USER} "]))[1],
    check=lambda logs, c: not logs.get(f" {USER} ") or pytest.fail("stored a user id with spaces"))

add("api-embed-text-columns-string", "error", "text_columns must be a list of column names",
    lambda c: EmbedConfig(text_columns="title"))
add("api-embed-chunk-size-zero", "error", "chunk_size must be >= 1", lambda c: EmbedConfig(chunk_size=0))
add("api-evaluate-device", "error", "device='banana'",
    lambda c: evaluate_store(c.trained, c.folder / "interactions.csv", device="banana"))
add("api-evaluate-unknown-items-value", "error", "unknown_items",
    lambda c: evaluate_store(c.trained, c.folder / "interactions.csv", unknown_items="skip"))
add("api-evaluate-missing-store", "error", "",
    lambda c: evaluate_store(c.tmp / "nostore", c.folder / "interactions.csv"))
add("api-evaluate-unknown-event", "error", "unknown event name(s) ['click']",
    lambda c: evaluate_store(c.trained, c.write("i.csv", "user_id,item_id,timestamp,event\n1,1,5,click\n")))
add("api-evaluate-valid-tsv", "valid", "", lambda c: evaluate_store(
    c.trained, c.write("i.tsv", pd.read_csv(c.folder / "interactions.csv").to_csv(sep="\t", index=False)),
    text_encoder=c.enc))
add("api-refresh-nothing", "valid", "", lambda c: refresh_store(c.store()))


# -- the test ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, ctx: Ctx):
    try:
        result = case.run(ctx)
    except ERRORS as error:
        outcome, text = "error", str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        assert text.strip(), f"{type(error).__name__} without a message"
        result = None
    else:
        if isinstance(result, Cli):
            outcome = {0: "valid", 1: "error", 2: "error", 3: "fallback"}[result.code]
            text = result.err
            if outcome == "error":
                assert "error: " in text, text
        elif case.fallback is not None:
            text = case.fallback(result)
            outcome = "fallback" if text else "valid"
        else:
            outcome, text = "valid", ""
    assert outcome == case.outcome, f"expected {case.outcome}, got {outcome}: {text}"
    assert case.expect in text, text
    if case.check is not None:
        case.check(result, ctx)


# -- numeric options: refused while parsing, before any model loads or any folder is written --------------------
@pytest.mark.parametrize("argv", [
    ["embed", "items.csv", "--store", "new", "--batch-size", "-1"],
    ["embed", "items.csv", "--store", "new", "--batch-size", "0"],
    ["embed", "items.csv", "--store", "new", "--chunk-size", "-3"],
    ["train", "--store", "new", "--interactions", "i.csv", "--epochs", "-1"],
    ["train", "--store", "new", "--interactions", "i.csv", "--max-len", "0"],
    ["train", "--store", "new", "--interactions", "i.csv", "--new-item-recall-ratio", "-1"],
    ["report", "--store", "new", "--interactions", "i.csv", "--jobs", "0"],
    ["report", "--store", "new", "--interactions", "i.csv", "--threads", "-2"],
    ["report", "--store", "new", "--interactions", "i.csv", "--baseline-patience", "0"],
    ["demo", "--store", "new", "--epochs", "0"],
], ids=lambda argv: f"{argv[0]}{argv[-2]}={argv[-1]}")
def test_numeric_options_are_refused_before_any_work(argv, tmp_path, monkeypatch):
    import time

    import mmrec.demo
    import mmrec.embed
    import mmrec.report
    import mmrec.train

    reached = []
    for module, name in ((mmrec.embed, "embed_catalog"), (mmrec.train, "train_store"), (mmrec.report, "run_report"),
                         (mmrec.demo, "run_demo")):
        monkeypatch.setattr(module, name, lambda *args, _name=name, **kwargs: reached.append(_name))
    (tmp_path / "items.csv").write_text("item_id,title\n7,A\n")
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n1,7,5\n")
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    result = cli(argv)
    assert result.code == 2, result
    assert f"argument {argv[-2]}: expected " in result.err
    assert time.perf_counter() - start < 5 and not reached
    assert not (tmp_path / "new").exists()
