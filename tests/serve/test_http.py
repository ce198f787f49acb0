"""The HTTP service (``mmrec serve``, :mod:`mmrec.serve.app`): a real uvicorn server on loopback, spoken to over
HTTP, on copies of the serving tests' trained store. Answers equal the Python API's; events are judged as
``mmrec refresh`` judges a file; a retrained store is swapped in while requests keep arriving."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from mmrec import Recommender, Store
from mmrec.io.events import read_events
from mmrec.serve.app import create_app
from mmrec.serve.refresh import validate_events
from mmrec.store import DB_NAME
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import train_store

from ..conftest import REPO, copy_store
from .conftest import PROBE


# -- servers (the bad-input corpus uses these too) ------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no server at {url} after {timeout} s")


@contextmanager
def cli_server(store: Path, log: Path, *options: str):
    """``mmrec serve`` in a subprocess on a free loopback port; yields its URL, stops it with SIGINT (and checks it
    stopped cleanly)."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "serve", "--store", str(store), "--port",
                                    str(port), *options], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    assert code == 0, log.read_text()[-3000:]


@contextmanager
def thread_server(app):
    """uvicorn serving ``app`` on a free loopback port from a thread of this process; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        wait_until_up(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()


def integrity(store: Path) -> str:
    db = sqlite3.connect(store / DB_NAME)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """``mmrec serve`` on a copy of the trained store: ``(url, store copy)``."""
    folder = tmp_path_factory.mktemp("http")
    store = copy_store(trained[1], folder / "store")
    with cli_server(store, folder / "server.log") as url:
        yield url, store
    assert integrity(store) == "ok"


def post(url: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


# -- answers ----------------------------------------------------------------------------------------------------
def test_score_and_recommend_equal_the_python_api(served):
    url, store = served
    rec = Recommender.load(store, device="cpu")
    answer = post(url, "/score", {"user_id": "1", "item_ids": PROBE})
    assert answer.status_code == 200 and answer.json()["model_id"] == rec.model_id
    np.testing.assert_allclose(answer.json()["scores"], rec.score("1", PROBE), rtol=1e-6)
    # integers are ids too, as in the Python API
    np.testing.assert_allclose(post(url, "/score", {"user_id": 1, "item_ids": [260]}).json()["scores"],
                               answer.json()["scores"][:1], rtol=1e-6)

    history = [("260", "interaction", 1700000000), ("1196", "interaction", 1700000100), ("2571", None, 1700000200)]
    answer = post(url, "/score", {"history": [{"item_id": i, "event": e, "timestamp": t} for i, e, t in history],
                                  "item_ids": PROBE})
    np.testing.assert_allclose(answer.json()["scores"], rec.score(history=history, item_ids=PROBE), rtol=1e-6)

    for user, k, exclude in (("1", 10, True), ("7", 25, False), ("never-seen-user", 5, True)):
        answer = post(url, "/recommend", {"user_id": user, "k": k, "exclude_seen": exclude})
        assert answer.status_code == 200, answer.text
        expected = rec.recommend(user, k=k, exclude_seen=exclude)
        assert [i["item_id"] for i in answer.json()["items"]] == [i for i, _ in expected]
        np.testing.assert_allclose([i["score"] for i in answer.json()["items"]], [s for _, s in expected], rtol=1e-6)
    # a cold user is served from the model's initial state, like the Python API (not a 404)
    assert post(url, "/recommend", {"user_id": "another-new-user", "k": 5}).json()["items"] == \
        post(url, "/recommend", {"user_id": "never-seen-user", "k": 5}).json()["items"]
    rec.store.close()


def test_explanations_over_http_equal_the_python_api(served):
    url, store = served
    rec = Recommender.load(store, device="cpu")
    answer = post(url, "/recommend", {"user_id": "1", "k": 3, "explain": True})
    assert answer.status_code == 200
    expected = rec.recommend("1", k=3, explain=True)
    got = answer.json()["items"]
    assert [i["item_id"] for i in got] == [i for i, _, _ in expected]
    for item, (_, _, why) in zip(got, expected):
        assert [r["item_id"] for r in item["reasons"]] == [r.item_id for r in why]
        np.testing.assert_allclose([r["weight"] for r in item["reasons"]], [r.weight for r in why], rtol=1e-5)
    assert post(url, "/recommend", {"user_id": "1", "k": 3}).json()["items"][0]["reasons"] is None
    diverse = post(url, "/recommend", {"user_id": "1", "k": 5, "diversity": 0.5}).json()["items"]
    assert [i["item_id"] for i in diverse] == [i for i, _ in rec.recommend("1", k=5, diversity=0.5)]
    assert post(url, "/recommend", {"user_id": "1", "diversity": 2}).status_code == 422
    answer = post(url, "/explain", {"user_id": "1", "item_ids": [got[0]["item_id"], "260"], "top": 2})
    assert answer.status_code == 200 and len(answer.json()["reasons"]) == 2
    assert [r["item_id"] for r in answer.json()["reasons"][0]] == [r.item_id for r in expected[0][2][:2]]
    missing = post(url, "/explain", {"user_id": "1", "item_ids": ["no-such-item"]})
    assert missing.status_code == 404 and missing.json()["detail"]["unknown_item_ids"] == ["no-such-item"]
    assert post(url, "/explain", {"user_id": "1", "item_ids": ["260"], "top": 0}).status_code == 422


def test_events_are_judged_as_refresh_judges_a_file_and_change_the_next_answers(served, tmp_path):
    url, store = served
    events = [{"user_id": "http-1", "item_id": "260", "timestamp": 2000000000},
              {"user_id": "http-1", "item_id": 1210, "event": "interaction", "timestamp": 2000000060},
              {"user_id": "http-1", "item_id": "2571", "timestamp": "2033-05-18T03:35:00Z"}]  # a date, as in files
    answer = post(url, "/events", {"events": events[:2]})
    assert answer.status_code == 200, answer.text
    assert {k: answer.json()[k] for k in ("applied", "duplicates", "users")} == {"applied": 2, "duplicates": 0,
                                                                                 "users": 1}
    assert post(url, "/events", {"events": events[2:]}).json()["applied"] == 1
    again = post(url, "/events", {"events": events[:2]}).json()
    assert (again["applied"], again["duplicates"]) == (0, 2)

    rec = Recommender.load(store, device="cpu")
    assert [e[1] for e in rec.store.user_events(["http-1"])["http-1"]] == ["260", "1210", "2571"]
    top = post(url, "/recommend", {"user_id": "http-1", "k": 20}).json()["items"]
    assert [i["item_id"] for i in top] == [i for i, _ in rec.recommend("http-1", k=20)]
    assert not {"260", "1210", "2571"} & {i["item_id"] for i in top}
    cold = post(url, "/recommend", {"user_id": "never-seen-user", "k": 20}).json()["items"]
    assert top != cold

    # every bad row is named with its field, for the same rows and reasons `mmrec refresh` rejects in a file; the
    # good rows of the batch are not written either
    batch = [{"user_id": "http-2", "item_id": "260", "event": "interaction", "timestamp": 2000000000, "text": ""},
             {"user_id": "http-2", "item_id": "no-such-item", "event": "interaction", "timestamp": 2000000001,
              "text": ""},
             {"user_id": "http-2", "item_id": "318", "event": "interaction", "timestamp": "not-a-time", "text": ""},
             {"user_id": "http-2", "item_id": "318", "event": "purchase", "timestamp": 2000000002, "text": ""},
             {"user_id": "http-2", "item_id": "318", "event": "interaction", "timestamp": 2000000003, "text": "wow"},
             {"user_id": "http-2", "item_id": "318", "event": "tag", "timestamp": 2000000004, "text": ""}]
    answer = post(url, "/events", {"events": batch})
    assert answer.status_code == 422
    found = {(e["loc"][2], e["loc"][3], e["msg"]) for e in answer.json()["detail"]}
    pd.DataFrame(batch).to_csv(tmp_path / "events.csv", index=False)
    _, rejected = validate_events(read_events(tmp_path / "events.csv"), rec)
    assert found == {(r["row"] - 1, r["field"], r["reason"]) for r in rejected}
    assert {(i, field) for i, field, _ in found} == {(1, "item_id"), (2, "timestamp"), (3, "event"), (4, "text"),
                                                     (5, "text")}
    assert rec.store.user_events(["http-2"])["http-2"] == []
    rec.store.close()


def test_healthz_metrics_and_docs(served):
    url, store = served
    with Store(store, create=False) as opened:
        generation, model_id = opened.current_model()
        items = len(opened.item_ids())
    assert post(url, "/score", {"user_id": "1", "item_ids": ["260"]}).status_code == 200
    assert post(url, "/recommend", {"user_id": "1", "k": 0}).status_code == 422
    health = httpx.get(f"{url}/healthz").json()
    assert health == {"ok": True, "model_id": model_id, "generation": generation, "items": items, "reloads": 0,
                      "reload_error": None}

    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'mmrec_http_requests_total{endpoint="/score",method="POST",status="200"}' in text
    assert 'mmrec_http_requests_total{endpoint="/recommend",method="POST",status="422"}' in text
    assert 'mmrec_http_request_duration_seconds_bucket{endpoint="/score",le="0.1"}' in text
    assert 'mmrec_http_request_duration_seconds_count{endpoint="/recommend"}' in text
    assert f"mmrec_model_generation {float(generation)}" in text

    assert "swagger-ui" in httpx.get(f"{url}/docs").text
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/score", "/recommend", "/events", "/healthz", "/metrics"} <= schema["paths"].keys()
    assert schema["components"]["schemas"]["RecommendRequest"]["properties"]["k"]["maximum"] == 1000


def test_workers_serve_from_several_processes(served, tmp_path):
    url, store = served
    with cli_server(store, tmp_path / "server.log", "--workers", "2", "--threads", "1") as workers:
        expected = post(url, "/recommend", {"user_id": "3", "k": 10}).json()
        for _ in range(6):
            assert post(workers, "/recommend", {"user_id": "3", "k": 10}).json() == expected
    assert "Started parent process" in (tmp_path / "server.log").read_text()


# -- hot swap ---------------------------------------------------------------------------------------------------
def test_a_retrained_store_is_swapped_in_while_requests_keep_succeeding(trained, text_encoder, tmp_path):
    folder, store_dir, _, _ = trained
    store = copy_store(store_dir, tmp_path / "store")
    with cli_server(store, tmp_path / "server.log") as url:
        old = httpx.get(f"{url}/healthz").json()
        answers, stop = [], threading.Event()

        def client() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                n = 0
                while not stop.is_set():
                    user = ["1", "2", "3", "never-seen-user"][n % 4]
                    try:
                        reply = http.post("/recommend", json={"user_id": user, "k": 10})
                        answers.append((reply.status_code, reply.json().get("model_id")))
                    except Exception as error:  # a failed request is recorded, never ends the client
                        answers.append((repr(error), None))
                    n += 1

        thread = threading.Thread(target=client)
        thread.start()
        try:
            summary = train_store(store, folder / "interactions.csv", folder / "tags.csv",
                                  TrainConfig(epochs=1, seed=1234, show_progress=False), log=None,
                                  text_encoder=text_encoder)
            assert summary["model_id"] != old["model_id"]
            deadline = time.monotonic() + 15
            while httpx.get(f"{url}/healthz").json()["model_id"] != summary["model_id"]:
                assert time.monotonic() < deadline, "the retrained model was not swapped in within 15 s"
                time.sleep(0.1)
            swapped, deadline = len(answers), time.monotonic() + 30
            while len(answers) < swapped + 5 and time.monotonic() < deadline:  # a few answers after the swap
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=60)
        health = httpx.get(f"{url}/healthz").json()
        assert health["reloads"] == 1 and health["generation"] == old["generation"] + 1
        assert [a for a in answers if a[0] != 200] == []
        models = [m for _, m in answers]
        assert models[0] == old["model_id"] and models[-1] == summary["model_id"]
        # writes go to the new model
        written = post(url, "/events", {"events": [{"user_id": "after-swap", "item_id": "260", "timestamp": 1}]})
        assert written.status_code == 200 and written.json()["model_id"] == summary["model_id"]
    assert integrity(store) == "ok"


def test_a_write_refused_as_stale_is_retried_on_the_reloaded_model_and_errors_never_stop_the_server(trained,
                                                                                                    tmp_path):
    store = copy_store(trained[1], tmp_path / "store")
    app = create_app(store, threads=None, check_every=0)  # no watcher: only the write notices the retrain
    with thread_server(app) as url:
        before = httpx.get(f"{url}/healthz").json()
        with Store(store, create=False) as opened:  # a retrain installing a model: a new generation
            opened.install_model(before["model_id"])
        assert post(url, "/recommend", {"user_id": "1"}).status_code == 200  # reads go on with the loaded model
        answer = post(url, "/events", {"events": [{"user_id": "stale-1", "item_id": "260", "timestamp": 5}]})
        assert answer.status_code == 200 and answer.json()["applied"] == 1
        health = httpx.get(f"{url}/healthz").json()
        assert (health["generation"], health["reloads"]) == (before["generation"] + 1, 1)

        # an internal failure (the model's database connection gone) is a 500 with a JSON body, not a crash
        app.state.models.current.rec.store.close()
        broken = post(url, "/recommend", {"user_id": "a-user-nobody-asked-for-yet"})
        assert broken.status_code == 500 and "internal error" in broken.json()["detail"]
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert 'status="500"' in httpx.get(f"{url}/metrics").text
    assert integrity(store) == "ok"
