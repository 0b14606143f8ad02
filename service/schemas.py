"""Request and response bodies (pydantic). Requests are strict: unknown fields are refused, and no value
is coerced (`"k": "5"` or `true` is not a number, a timestamp is a finite number in range)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from hatllm.core.search import MAX_BEAM_WIDTH

LATEST_TIMESTAMP = 4_102_444_800.0  # 2100-01-01 in seconds: anything later is a unit mistake (ms, us)


def plain_text(value: str) -> str:
    """Refuse text Redis and the tokenizer cannot take as it is: lone surrogates, control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("must not contain control characters")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(plain_text)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(plain_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Filters(Strict):
    allow: list[Id] | None = Field(None, max_length=100_000, description="only these items may be recommended")
    deny: list[Id] = Field(default_factory=list, max_length=100_000, description="these items may not be recommended")


class RecommendRequest(Strict):
    user_id: Id
    k: int = Field(10, ge=1, le=MAX_BEAM_WIDTH, description="number of items wanted")
    exclude_seen: bool = Field(True, description="never recommend items in the user's history")
    filters: Filters | None = None
    history: list[Id] | None = Field(None, max_length=1000,
                                     description="item ids, oldest first; replaces the stored history")


class RecommendedItem(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float | None = Field(description="log-probability of the title under the model, renormalised over "
                                            "the titles this request allows; null for cold-start answers")


class RecommendResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    model: str
    catalog_version: int
    history_length: int = Field(description="history items the answer is conditioned on")
    strategy: Literal["model", "cold_start_popular"] = Field(
        description="cold_start_popular: no usable history, most popular items (not a model answer)")
    exhausted: bool = Field(description="true when fewer than k items could be recommended at all")
    pipeline: str = Field(description="what ranked the items: 'llm', 'llm+sasrec' (decode-time fusion) or "
                                      "'popular' (cold start)")


class Event(Strict):
    user_id: Id
    item_id: Id
    timestamp: float | None = Field(None, ge=0, le=LATEST_TIMESTAMP, allow_inf_nan=False,
                                    description="seconds since the epoch; orders the events of one call")


class EventBatch(Strict):
    events: list[Event] = Field(min_length=1)


class EventsAccepted(BaseModel):
    accepted: int


class CatalogItem(Strict):
    item_id: Id
    title: Title


class CatalogItems(Strict):
    items: list[CatalogItem] = Field(min_length=1, max_length=100_000)


class CatalogInfo(BaseModel):
    version: int
    size: int


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason")
    message: str
    details: object | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class UserHistory(BaseModel):
    user_id: str
    item_ids: list[str] = Field(description="the stored history, oldest first (at most HATREC_HISTORY_CAP items)")


class HistoryErased(BaseModel):
    user_id: str
    erased: int = Field(description="items removed from the stored history (0: there was none)")
