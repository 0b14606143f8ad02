from __future__ import annotations

from fastapi import APIRouter, Depends

from .. import metrics
from ..dependencies import ServicesDep, require
from ..errors import ServiceError, unknown_items
from ..schemas import Event, EventBatch, EventsAccepted

router = APIRouter(tags=["events"], dependencies=[Depends(require("write"))])


@router.post("/events", response_model=EventsAccepted)
async def ingest_events(body: Event | EventBatch, services: ServicesDep) -> EventsAccepted:
    """Append interactions to histories (one event or `{"events": [...]}`); durable when this returns."""
    events = body.events if isinstance(body, EventBatch) else [body]
    limit = services.settings.max_events_per_call
    if len(events) > limit:
        raise ServiceError(422, "too_many_events", f"at most {limit} events per call")
    item_ids = list(dict.fromkeys(e.item_id for e in events))
    titles = await services.store.titles(item_ids)
    unknown = [item for item, title in zip(item_ids, titles) if title is None]
    if unknown:
        raise unknown_items(unknown, "events")
    ordered = sorted(events, key=lambda e: e.timestamp if e.timestamp is not None else float("-inf"))
    accepted = await services.store.append_events((e.user_id, e.item_id) for e in ordered)
    metrics.EVENTS.inc(accepted)
    return EventsAccepted(accepted=accepted)
