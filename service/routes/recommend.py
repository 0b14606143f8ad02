from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ..dependencies import ServicesDep, require
from ..errors import ServiceError
from ..schemas import RecommendRequest, RecommendResponse

router = APIRouter(tags=["recommendations"])


@router.post("/recommend", response_model=RecommendResponse)
async def recommend(req: RecommendRequest, services: ServicesDep,
                    scopes: Annotated[frozenset[str], Depends(require("read"))]) -> RecommendResponse:
    """The user's next items, best first. No usable history: most popular items (strategy cold_start_popular)."""
    if req.exclude_seen and req.history is None and req.filters and req.filters.allow is not None and "trusted" not in scopes:
        # The items of the allow-list missing from the answer would be exactly those the user has seen.
        raise ServiceError(403, "needs_trusted_scope", "exclude_seen with an allow-list reveals which listed items the "
                                                       "user has seen: it needs a key with the 'trusted' scope (or "
                                                       "exclude_seen=false, or an explicit history)")
    return await services.recommender.recommend(req)
