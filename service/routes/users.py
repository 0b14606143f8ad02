from __future__ import annotations

from fastapi import APIRouter, Depends

from ..dependencies import ServicesDep, require
from ..schemas import HistoryErased, Id, UserHistory

router = APIRouter(tags=["users"])


@router.get("/users/{user_id}/history", response_model=UserHistory, dependencies=[Depends(require("trusted"))])
async def get_history(user_id: Id, services: ServicesDep) -> UserHistory:
    """The whole stored history, oldest first: what `exclude_seen` excludes (prompts take its last
    `max_history` items). A history is personal data: `trusted` keys only."""
    return UserHistory(user_id=user_id, item_ids=await services.store.history(user_id, services.settings.history_cap))


@router.delete("/users/{user_id}/history", response_model=HistoryErased, dependencies=[Depends(require("write"))])
async def erase_history(user_id: Id, services: ServicesDep) -> HistoryErased:
    """Erase the user's stored history (a deletion request); the next recommendation is a cold start.
    Popularity counts stay: they are per item and carry no user id."""
    return HistoryErased(user_id=user_id, erased=await services.store.erase_history(user_id))
