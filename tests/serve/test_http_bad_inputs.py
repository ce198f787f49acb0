"""A corpus of bad HTTP requests against a real server (uvicorn on loopback, a copy of the trained store): each is
answered with the documented status naming the field or the ids at fault (or 200 for the documented fallbacks),
the server stays up, nothing is written by a refused request, and the store passes SQLite's integrity check."""

from __future__ import annotations

import json

import httpx
import pytest

from mmrec import Store
from mmrec.serve.app import create_app
from mmrec.serve.schemas import MAX_EVENTS, MAX_ITEMS

from ..conftest import copy_store
from .test_http import integrity, thread_server

# an event that applies: events cases add to it
GOOD = {"user_id": "bad-input-user", "item_id": "260", "timestamp": 2000000000}
NAN = b'{"history": [{"item_id": "260", "timestamp": NaN}], "item_ids": ["1210"]}'
INF = b'{"history": [{"item_id": "260", "timestamp": Infinity}], "item_ids": ["1210"]}'
EVENT_NAN = b'{"events": [{"user_id": "u", "item_id": "260", "timestamp": NaN}]}'


def history(**event):
    return {"history": [{"item_id": "260", "timestamp": 1700000000, **event}], "item_ids": ["1210"]}


def events(*rows):
    return {"events": [{**GOOD, **row} for row in rows]}


# (id, path, body: JSON-able or raw bytes, status, where: the error loc (422), the unknown ids (404) or None)
CASES = [
    # the body itself
    ("malformed-json", "/score", b'{"user_id": "1", "item_ids": [', 422, ("body",)),
    ("json-array-body", "/score", [1, 2, 3], 422, ("body",)),
    ("json-string-body", "/recommend", "user 1 please", 422, ("body",)),
    ("json-null-body", "/events", None, 422, ("body",)),
    ("empty-object", "/recommend", {}, 422, ("body", "user_id")),
    ("unknown-field", "/recommend", {"user_id": "1", "top": 5}, 422, ("body", "top")),
    ("10-mb-body", "/score", {"user_id": "1", "item_ids": ["260"], "pad": "x" * (10 * 2**20)}, 413, None),
    # ids
    ("user-id-object", "/recommend", {"user_id": {"id": 1}}, 422, ("body", "user_id")),
    ("user-id-list", "/score", {"user_id": ["1"], "item_ids": ["260"]}, 422, ("body", "user_id")),
    ("user-id-1-mb", "/recommend", {"user_id": "u" * 2**20}, 422, ("body", "user_id")),
    ("user-id-blank", "/recommend", {"user_id": "   "}, 422, ("body", "user_id")),
    ("user-id-bool", "/recommend", {"user_id": True}, 422, ("body", "user_id")),
    ("user-id-float", "/recommend", {"user_id": 1.5}, 422, ("body", "user_id")),
    ("user-id-int-beyond-int64", "/recommend", {"user_id": 2**70}, 422, ("body", "user_id")),
    ("item-id-object", "/score", {"user_id": "1", "item_ids": [{"id": "260"}]}, 422, ("body", "item_ids", 0)),
    ("item-ids-empty", "/score", {"user_id": "1", "item_ids": []}, 422, ("body", "item_ids")),
    ("item-ids-not-a-list", "/score", {"user_id": "1", "item_ids": "260"}, 422, ("body", "item_ids")),
    ("item-ids-missing", "/score", {"user_id": "1"}, 422, ("body", "item_ids")),
    ("item-ids-too-many", "/score", {"user_id": "1", "item_ids": ["260"] * (MAX_ITEMS + 1)}, 422,
     ("body", "item_ids")),
    ("unknown-item-ids", "/score", {"user_id": "1", "item_ids": ["260", "no-such-item", 999999999]}, 404,
     ["no-such-item", "999999999"]),
    ("unknown-item-in-history", "/score", history(item_id="no-such-item"), 404, ["no-such-item"]),
    ("user-and-history", "/score", {"user_id": "1", **history()}, 422, ("body",)),
    ("neither-user-nor-history", "/score", {"item_ids": ["260"]}, 422, ("body",)),
    # timestamps and events of a history
    ("history-bad-timestamp", "/score", history(timestamp="yesterday"), 422, ("body", "history", 0, "timestamp")),
    ("history-nan-timestamp", "/score", NAN, 422, ("body", "history", 0, "timestamp")),
    ("history-inf-timestamp", "/score", INF, 422, ("body", "history", 0, "timestamp")),
    ("history-timestamp-beyond-int64", "/score", history(timestamp=1e30), 422, ("body", "history", 0, "timestamp")),
    ("history-timestamp-bool", "/score", history(timestamp=True), 422, ("body", "history", 0, "timestamp")),
    ("history-missing-timestamp", "/score", {"history": [{"item_id": "260"}], "item_ids": ["1210"]}, 422,
     ("body", "history", 0, "timestamp")),
    ("history-unknown-event", "/score", history(event="purchase"), 422, ("body", "history", 0, "event")),
    ("history-text-on-interaction", "/score", history(text="great film"), 422, ("body", "history", 0)),
    ("history-tag-without-text", "/score", history(event="tag"), 422, ("body", "history", 0)),
    # k and flags
    ("k-zero", "/recommend", {"user_id": "1", "k": 0}, 422, ("body", "k")),
    ("k-negative", "/recommend", {"user_id": "1", "k": -1}, 422, ("body", "k")),
    ("k-huge", "/recommend", {"user_id": "1", "k": 10**12}, 422, ("body", "k")),
    ("k-string", "/recommend", {"user_id": "1", "k": "ten"}, 422, ("body", "k")),
    ("k-numeric-string", "/recommend", {"user_id": "1", "k": "10"}, 422, ("body", "k")),
    ("k-fraction", "/recommend", {"user_id": "1", "k": 2.5}, 422, ("body", "k")),
    ("k-null", "/recommend", {"user_id": "1", "k": None}, 422, ("body", "k")),
    ("exclude-seen-string", "/recommend", {"user_id": "1", "exclude_seen": "yes"}, 422, ("body", "exclude_seen")),
    # events: every row judged, nothing written unless all pass
    ("events-empty", "/events", {"events": []}, 422, ("body", "events")),
    ("events-not-a-list", "/events", {"events": GOOD}, 422, ("body", "events")),
    ("events-too-many", "/events", {"events": [GOOD] * (MAX_EVENTS + 1)}, 422, ("body", "events")),
    ("event-unknown-item", "/events", events({}, {"item_id": "no-such-item"}), 422, ("body", "events", 1, "item_id")),
    ("event-unknown-event", "/events", events({"event": "purchase"}), 422, ("body", "events", 0, "event")),
    ("event-text-on-interaction", "/events", events({"text": "great film"}), 422, ("body", "events", 0, "text")),
    ("event-tag-without-text", "/events", events({"event": "tag"}), 422, ("body", "events", 0, "text")),
    ("event-unreadable-timestamp", "/events", events({"timestamp": "not-a-time"}), 422,
     ("body", "events", 0, "timestamp")),
    ("event-nan-timestamp", "/events", EVENT_NAN, 422, ("body", "events", 0, "timestamp")),
    ("event-user-id-nested", "/events", events({"user_id": {"id": "u"}}), 422, ("body", "events", 0, "user_id")),
    ("event-missing-item", "/events", {"events": [{"user_id": "u", "timestamp": 1}]}, 422,
     ("body", "events", 0, "item_id")),
    ("event-text-1-mb", "/events", events({"event": "tag", "text": "t" * 2**20}), 422,
     ("body", "events", 0, "text")),
    # documented fallbacks
    ("unknown-user-recommend", "/recommend", {"user_id": "nobody-ever", "k": 3}, 200, None),
    ("unknown-user-score", "/score", {"user_id": "nobody-ever", "item_ids": ["260"]}, 200, None),
    ("empty-history", "/score", {"history": [], "item_ids": ["260"]}, 200, None),
    ("duplicate-events", "/events", events({"user_id": "dup-user"}, {"user_id": "dup-user"}), 200, None),
]


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    store = copy_store(trained[1], tmp_path_factory.mktemp("http-bad") / "store")
    with thread_server(create_app(store, threads=None)) as url:
        yield url, store


def _send(url: str, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize("path, body, status, where", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_refused_naming_the_field_and_the_server_stays_up(server, path, body, status, where):
    url, store = server
    with Store(store, create=False) as opened:
        logged = len(opened.user_events())
    answer = _send(url, path, body)
    assert answer.status_code == status, answer.text[:2000]
    if status == 422:
        locs = [tuple(error["loc"]) for error in answer.json()["detail"]]
        assert any(loc[: len(where)] == where for loc in locs), locs
        assert all(error["msg"] for error in answer.json()["detail"])
    elif status == 404:
        detail = answer.json()["detail"]
        assert detail["unknown_item_ids"] == where and all(i in detail["msg"] for i in where)
    elif status == 200 and path == "/events":
        assert (answer.json()["applied"], answer.json()["duplicates"]) == (1, 1)
    with Store(store, create=False) as opened:  # a refused request wrote nothing
        assert len(opened.user_events()) == logged + (status == 200 and path == "/events")
    assert httpx.get(f"{url}/healthz", timeout=10).json()["ok"] is True
    assert integrity(store) == "ok"


def test_wrong_method_path_and_content_type(server):
    url, store = server
    assert httpx.get(f"{url}/score").status_code == 405
    assert httpx.post(f"{url}/no-such-endpoint", json={}).status_code == 404
    plain = httpx.post(f"{url}/recommend", content=b'{"user_id": "1"}', headers={"content-type": "text/plain"})
    assert plain.status_code == 422
    assert 'endpoint="unmatched"' in httpx.get(f"{url}/metrics").text
    assert integrity(store) == "ok"
