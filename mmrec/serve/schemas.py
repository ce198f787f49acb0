"""Request and response bodies of the HTTP service (:mod:`mmrec.serve.app`), with their limits: pydantic models
whose validation errors become 422 answers naming the field."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, WithJsonSchema, model_validator

from ..io.values import INT64_LIMIT, id_string, unix_seconds

# Limits of a request: item ids (and history events) per /score, events per /events batch, k, id and text lengths,
# and the body: a larger one is refused with 413 before it is parsed.
MAX_ITEMS, MAX_EVENTS, MAX_K, MAX_ID_LENGTH, MAX_TEXT_LENGTH = 10_000, 10_000, 1_000, 256, 10_000
MAX_BODY_BYTES = 8 * 2**20


def checked_id(value: Any) -> str:
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise ValueError(f"ids are at most {MAX_ID_LENGTH} characters, got {len(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_LIMIT <= value < INT64_LIMIT:
        raise ValueError("integer ids must be within the int64 range")
    return id_string(value, "an id")  # ValueError for anything but a non-blank string or an integer


def checked_time(value: Any) -> int | float | str:
    """A timestamp as given (unix seconds, or for ``/events`` also a date string), refused when no such value."""
    if isinstance(value, str) and len(value) <= 64:
        return value
    unix_seconds(value, "timestamp")  # numbers: finite, within int64
    return value


ID_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}, {"type": "integer"}]}
TIME_SCHEMA = {"anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "string", "maxLength": 64}]}
Id = Annotated[str, PlainValidator(checked_id), WithJsonSchema(ID_SCHEMA)]
UnixTime = Annotated[int, PlainValidator(lambda v: unix_seconds(checked_time(v), "timestamp")), WithJsonSchema(TIME_SCHEMA)]
EventTime = Annotated[int | float | str, PlainValidator(checked_time), WithJsonSchema(TIME_SCHEMA)]
EventName = Annotated[str, Field(strict=True, min_length=1, max_length=64)]
Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT_LENGTH)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a default


class HistoryEvent(Body):
    item_id: Id
    event: EventName | None = None
    timestamp: UnixTime
    text: Text | None = None


class ScoreRequest(Body):
    user_id: Id | None = None
    history: list[HistoryEvent] | None = Field(None, max_length=MAX_ITEMS)
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_ITEMS)

    @model_validator(mode="after")
    def one_user(self) -> ScoreRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class ScoreResponse(BaseModel):
    scores: list[float]
    model_id: str


class RecommendRequest(Body):
    user_id: Id
    k: int = Field(10, strict=True, ge=1, le=MAX_K)
    exclude_seen: StrictBool = True
    explain: StrictBool = False
    diversity: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)


class Reason(BaseModel):
    """A past event supporting an item: ``weight`` is the drop in the item's logit without it."""

    item_id: str
    event: str
    timestamp: int
    weight: float
    text: str = ""
    keyphrases: list[str] = []


class Recommended(BaseModel):
    item_id: str
    score: float
    reasons: list[Reason] | None = None


class ExplainRequest(Body):
    user_id: Id
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_K)
    top: int = Field(3, strict=True, ge=1, le=MAX_K)


class ExplainResponse(BaseModel):
    reasons: list[list[Reason]]
    model_id: str


class RecommendResponse(BaseModel):
    items: list[Recommended]
    model_id: str


class EventIn(HistoryEvent):
    user_id: Id
    timestamp: EventTime | None = None  # default: now; unix seconds or a date string, as in event files


class EventsRequest(Body):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsResponse(BaseModel):
    applied: int
    duplicates: int
    users: int
    recomputed: int
    model_id: str


class Health(BaseModel):
    ok: bool
    model_id: str
    generation: int
    items: int
    reloads: int
    reload_error: str | None
