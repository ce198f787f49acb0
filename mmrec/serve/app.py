"""The HTTP service behind ``mmrec serve``: score, recommend, explain and apply events over JSON (docs/serving.md).

``create_app(store_dir)`` builds the FastAPI application around a :class:`ModelHolder`, which owns the loaded
:class:`~mmrec.serve.recommender.Recommender` and swaps in a retrained model without a restart. Endpoints are plain
``def`` functions: FastAPI runs them on its thread pool and they call the shared ``Recommender`` concurrently (it
serialises what touches its SQLite connection itself, and commits events arriving together in one transaction).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..pseudonym import resolve_id_key
from ..store import StaleModelError
from .recommender import SERVING_THREADS, Recommender
from .refresh import validate_event_records
from .schemas import (MAX_BODY_BYTES, EventsRequest, EventsResponse, ExplainRequest, ExplainResponse, Health, Reason,
                      RecommendRequest, RecommendResponse, Recommended, ScoreRequest, ScoreResponse)

__all__ = ["ModelHolder", "create_app", "app_from_environment", "ENV_STORE", "ENV_DEVICE", "ENV_THREADS"]

log = logging.getLogger("mmrec.serve")

# the environment app_from_environment builds the app from (`mmrec serve --workers N` sets it)
ENV_STORE, ENV_DEVICE, ENV_THREADS = "MMREC_SERVE_STORE", "MMREC_SERVE_DEVICE", "MMREC_SERVE_THREADS"
ENV_DURABILITY, ENV_RETRIEVAL = "MMREC_SERVE_DURABILITY", "MMREC_SERVE_RETRIEVAL"


# -- the served model and its hot swap ------------------------------------------------------------------------
class Served:
    """One loaded ``Recommender``, its item ids as a set, and the requests using it now."""

    def __init__(self, rec: Recommender) -> None:
        self.rec = rec
        self.item_ids = frozenset(rec.item_ids)
        self.users = 0  # requests holding this model (guarded by the holder's lock)
        self.retired = False

    def close(self) -> None:
        self.rec.close()


class ModelHolder:
    """The model a server answers with. :meth:`call` runs a function on the current model; a watcher thread asks
    :meth:`Recommender.is_current` every ``check_every`` seconds and, after a retrain, loads the new model beside the
    old one and swaps the reference: requests already running finish on the old model, which is closed after the
    last of them."""

    def __init__(self, store_dir: str | Path, check_every: float = 0.5, **load_options) -> None:
        self.store_dir, self.check_every = Path(store_dir), check_every
        self._options = load_options  # Recommender.load's
        self.reloads = 0
        self.reload_error: str | None = None
        self._guard = threading.Lock()  # the current model and its users count
        self._loading = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._served = Served(Recommender.load(self.store_dir, **self._options))

    current = property(lambda self: self._served, doc="The model new requests get.")

    @contextmanager
    def model(self) -> Iterator[Served]:
        """The current model, kept open until the block ends even when a newer one is swapped in meanwhile."""
        with self._guard:
            served = self._served
            served.users += 1
        try:
            yield served
        finally:
            with self._guard:
                served.users -= 1
                close = served.retired and served.users == 0
            if close:
                served.close()

    def call(self, job: Callable[[Served], Any]) -> Any:
        with self.model() as served:
            return job(served)

    def reload_if_stale(self) -> bool:
        """Load the store's current model and swap it in, unless the served one still is current (another thread
        may have swapped meanwhile). Whether a new model was swapped in."""
        with self._loading:
            if self.call(lambda served: served.rec.is_current()):
                return False
            fresh = Served(Recommender.load(self.store_dir, **self._options))
            with self._guard:
                old, self._served = self._served, fresh
                old.retired = True
                close = old.users == 0
            self.reloads, self.reload_error = self.reloads + 1, None
            log.info("model %s (generation %d) swapped in", fresh.rec.model_id, fresh.rec.generation)
        if close:
            old.close()
        if not self.call(lambda served: served.rec.is_current()):
            raise StaleModelError(f"the model files in {self.store_dir} are not the store's current model "
                                  "(a retrain was interrupted, or is still installing?)")
        return True

    def start(self) -> None:
        if self._watcher is None and self.check_every > 0:
            self._watcher = threading.Thread(target=self._watch, name="mmrec-model-watcher", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._guard:
            served = self._served
            served.retired = True
            close = served.users == 0
        if close:
            served.close()

    def _watch(self) -> None:
        retry_at = 0.0
        while not self._stop.wait(self.check_every):
            if time.monotonic() < retry_at:
                continue
            try:
                self.reload_if_stale()
            except Exception as error:  # a retrain half-installed, a model that fails to load: keep serving the old
                self.reload_error = f"{type(error).__name__}: {error}"
                log.warning("keeping model %s: reload failed: %s", self._served.rec.model_id, self.reload_error)
                retry_at = time.monotonic() + 5.0


# -- endpoints ------------------------------------------------------------------------------------------------
router = APIRouter()


# Reads (/score, /recommend, /explain) are `async def`: a millisecond of CPU answered on the event loop costs less
# than handing it to the thread pool and back. /events stays a thread-pool endpoint: its group commit gathers the
# events of requests that wait together.
async def get_models(request: Request) -> ModelHolder:
    return request.app.state.models


Models = Annotated[ModelHolder, Depends(get_models)]
_ERRORS = {404: {"description": "unknown item ids, listed in `detail.unknown_item_ids`"},
           422: {"description": "invalid body: `detail` names each field at fault"}}


def _location(message: str) -> list:
    """Where a ``Recommender`` error message points, as a FastAPI error ``loc``."""
    found = re.match(r"(history|rows)\[(\d+)\]", message)
    return ["body"] if found is None else ["body", {"rows": "events"}.get(found[1], found[1]), int(found[2])]


def _answer(models: ModelHolder, job: Callable[[Served], Any], write: bool = False) -> Any:
    """``job`` on the current model, its documented errors as HTTP errors: ``KeyError`` (an unknown id) 404,
    ``ValueError`` 422; a write refused by a retrain is retried once on the reloaded model, then 503."""
    for attempt in range(2):
        try:
            return models.call(job)
        except StaleModelError as error:
            if not write or attempt == 1:
                raise HTTPException(503, f"the store's model changed during the request; retry ({error})") from error
            try:
                models.reload_if_stale()
            except Exception as reload_error:  # a retrain still installing: the client may retry shortly
                raise HTTPException(503, f"the store was retrained and its new model could not be loaded yet; "
                                         f"retry ({type(reload_error).__name__}: {reload_error})") from reload_error
        except KeyError as error:
            message = str(error.args[0] if error.args else error)
            raise HTTPException(404, {"msg": message, "loc": _location(message)}) from error
        except ValueError as error:
            raise HTTPException(422, [{"type": "value_error", "loc": _location(str(error)), "msg": str(error)}]) \
                from error
    raise AssertionError("unreachable")


def _require_items(served: Served, item_ids: list[str]) -> None:
    unknown = list(dict.fromkeys(i for i in item_ids if i not in served.item_ids))
    if unknown:
        raise HTTPException(404, {"msg": f"unknown item id(s) {unknown[:10]}{' ...' if len(unknown) > 10 else ''}: "
                                         "not in the store", "loc": ["body", "item_ids"],
                                  "unknown_item_ids": unknown[:1000], "count": len(unknown)})


@router.post("/score", responses=_ERRORS)
async def score(body: ScoreRequest, models: Models) -> ScoreResponse:
    """Probabilities in [0, 1] that the user engages with each of `item_ids`, in their order. Give a `user_id`
    (a user the store has never seen is scored from the model's initial state) or a `history` of events."""
    def job(served: Served) -> ScoreResponse:
        history = None if body.history is None else [(e.item_id, e.event, e.timestamp, e.text) for e in body.history]
        _require_items(served, body.item_ids + [e[0] for e in history or []])
        for n, event in enumerate(body.history or []):
            if event.event is not None and event.event not in served.rec.event_names:
                raise HTTPException(422, [{"type": "value_error", "loc": ["body", "history", n, "event"],
                                           "msg": f"unknown event; known events: {list(served.rec.event_names)}",
                                           "input": event.event}])
        scores = served.rec.score(body.user_id, body.item_ids, history=history)
        return ScoreResponse(scores=scores.tolist(), model_id=served.rec.model_id)

    return _answer(models, job)


@router.post("/recommend", responses=_ERRORS)
async def recommend(body: RecommendRequest, models: Models) -> RecommendResponse:
    """The top `k` items over the catalogue for `user_id`, best first. A user the store has never seen gets the
    cold-user list (from the model's initial state), not an error."""
    def job(served: Served) -> RecommendResponse:
        top = served.rec.recommend(body.user_id, k=body.k, exclude_seen=body.exclude_seen, explain=body.explain,
                                   diversity=body.diversity)
        items = [Recommended(item_id=r[0], score=r[1], reasons=_reasons(r[2]) if body.explain else None)
                 for r in top]
        return RecommendResponse(items=items, model_id=served.rec.model_id)

    return _answer(models, job)


def _reasons(reasons) -> list[Reason]:
    return [Reason(item_id=r.item_id, event=r.event, timestamp=r.timestamp, weight=r.weight, text=r.text,
                   keyphrases=list(r.keyphrases)) for r in reasons]


@router.post("/explain", responses=_ERRORS)
async def explain(body: ExplainRequest, models: Models) -> ExplainResponse:
    """For each of `item_ids`, the user's past events that most support it (at most `top`), best first."""
    def job(served: Served) -> ExplainResponse:
        _require_items(served, body.item_ids)
        why = served.rec.explain(body.user_id, body.item_ids, top=body.top)
        return ExplainResponse(reasons=[_reasons(r) for r in why], model_id=served.rec.model_id)

    return _answer(models, job)


@router.post("/events", responses={422: {"description": "one or more events were rejected; nothing was written"}})
def events(body: EventsRequest, models: Models) -> EventsResponse:
    """Apply behaviour events to the users' stored interests, judged row by row as `mmrec refresh` judges a file:
    all or nothing, so any rejected event makes it 422 listing every rejected one, and nothing is written."""
    def job(served: Served) -> EventsResponse:
        rec, now = served.rec, int(time.time())
        records = [{"user_id": e.user_id, "item_id": e.item_id, "event": e.event or rec.default_event,
                    "timestamp": now if e.timestamp is None else e.timestamp, "text": e.text or ""}
                   for e in body.events]
        rows, rejected = validate_event_records(records, rec)
        if rejected:
            raise HTTPException(422, [{"type": "rejected_event", "loc": ["body", "events", r["row"] - 1, r["field"]],
                                       "msg": r["reason"], "input": _shown(records[r["row"] - 1][r["field"]])}
                                      for r in rejected])
        counts = rec.apply_events(rows)
        return EventsResponse(**{k: counts[k] for k in ("applied", "duplicates", "users", "recomputed")},
                              model_id=rec.model_id)

    return _answer(models, job, write=True)


@router.get("/healthz")
def healthz(models: Models) -> Health:
    """The model served now (it changes after a retrain, without a restart) and the catalogue size."""
    rec = models.current.rec
    return Health(ok=True, model_id=rec.model_id, generation=rec.generation, items=len(rec.item_ids),
                  reloads=models.reloads, reload_error=models.reload_error)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics of this process: requests by endpoint and status, latency histograms per endpoint."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


# -- the application ------------------------------------------------------------------------------------------
class RequestMetrics:
    """ASGI middleware counting requests by endpoint (the route's path, ``unmatched`` for none), method and status,
    and timing them per endpoint."""

    def __init__(self, app, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("mmrec_http_requests", "HTTP requests answered", ["endpoint", "method", "status"],
                                registry=registry)
        self.latency = Histogram("mmrec_http_request_duration_seconds", "HTTP request latency", ["endpoint"],
                                 registry=registry, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, start = 500, time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - start)


def _shown(value: Any) -> Any:
    """An offending input as an error echoes it: as given when short, else the start of its JSON (or repr, for
    what JSON cannot hold: NaN, infinities)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)[:200]
    return value if len(text) <= 200 else text[:200] + "..."


async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with inputs shortened and made JSON (its own handler fails on a NaN input)."""
    errors = jsonable_encoder(error.errors())
    return JSONResponse({"detail": [{**e, "input": _shown(e.get("input"))} for e in errors]}, status_code=422)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": f"internal error ({type(error).__name__}); see the server log"}, status_code=500)


def create_app(store_dir: str | Path, *, device: str = "cpu", threads: int | None = SERVING_THREADS,
               durability: str = "normal", retrieval: str = "auto", check_every: float = 0.5,
               max_body_size: int = MAX_BODY_BYTES, id_key=None) -> FastAPI:
    """The HTTP service of the trained store ``store_dir`` (its model is loaded now: a store without one fails
    here). ``device``, ``threads``, ``durability``, ``retrieval``: as :meth:`Recommender.load`'s;
    ``check_every``: seconds between checks for a retrained model (0: never swap); ``id_key``: a pseudonymised
    store's key (``None``: ``MMREC_ID_KEY``), read once for every model swapped in."""
    models = ModelHolder(store_dir, check_every, device=device, threads=threads, durability=durability,
                         retrieval=retrieval, id_key=resolve_id_key(id_key))
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models.start()
        try:
            yield
        finally:
            models.close()

    app = FastAPI(title="mmrec", summary="Multimodal recommendations over HTTP", lifespan=lifespan,
                  max_body_size=max_body_size)
    app.state.models, app.state.registry = models, registry
    Gauge("mmrec_model_generation", "generation of the model served", registry=registry).set_function(
        lambda: models.current.rec.generation)
    Gauge("mmrec_model_reloads", "models swapped in since start", registry=registry).set_function(
        lambda: models.reloads)
    app.include_router(router)
    app.add_middleware(RequestMetrics, registry=registry)
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(Exception, internal_error)
    return app


def app_from_environment() -> FastAPI:
    """:func:`create_app` from the ``MMREC_SERVE_*`` variables (:data:`ENV_STORE`, required; device, threads,
    durability, retrieval): the factory each process of ``mmrec serve --workers N`` imports."""
    if not os.environ.get(ENV_STORE):
        raise RuntimeError(f"set {ENV_STORE} to the trained store folder")
    env = os.environ.get
    return create_app(env(ENV_STORE), device=env(ENV_DEVICE, "cpu"),
                      threads=int(env(ENV_THREADS) or SERVING_THREADS), durability=env(ENV_DURABILITY, "normal"), retrieval=env(ENV_RETRIEVAL, "auto"))
