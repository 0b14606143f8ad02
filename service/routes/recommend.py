from __future__ import annotations

from fastapi import APIRouter

from ..dependencies import ServicesDep
from ..schemas import RecommendRequest, RecommendResponse

router = APIRouter(tags=["recommendations"])


@router.post("/recommend", response_model=RecommendResponse)
async def recommend(req: RecommendRequest, services: ServicesDep) -> RecommendResponse:
    """The user's next items, best first. No usable history: most popular items (strategy cold_start_popular)."""
    return await services.recommender.recommend(req)
