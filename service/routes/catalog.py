from __future__ import annotations

from fastapi import APIRouter, Depends

from ..catalog import CatalogSnapshot
from ..dependencies import ServicesDep, require
from ..errors import ServiceError, catalog_unavailable
from ..schemas import CatalogInfo, CatalogItem, CatalogItems
from ..services import Services

router = APIRouter()


def catalog_info(snapshot: CatalogSnapshot) -> CatalogInfo:
    return CatalogInfo(version=snapshot.version, size=len(snapshot.titles))


async def stored_title(services: Services, item_id: str) -> str:
    (title,) = await services.store.titles([item_id])
    if title is None:
        raise ServiceError(404, "item_not_found", f"no item {item_id!r} in the catalog")
    return title


@router.get("/catalog", response_model=CatalogInfo, tags=["catalog"], dependencies=[Depends(require("read"))])
async def get_catalog(services: ServicesDep) -> CatalogInfo:
    snapshot = services.catalog.current
    if snapshot is None:
        raise catalog_unavailable(services.settings.retry_after_s)
    return catalog_info(snapshot)


@router.get("/catalog/items/{item_id}", response_model=CatalogItem, tags=["catalog"], dependencies=[Depends(require("read"))])
async def get_item(item_id: str, services: ServicesDep) -> CatalogItem:
    return CatalogItem(item_id=item_id, title=await stored_title(services, item_id))


@router.put("/admin/catalog/items", response_model=CatalogInfo, tags=["admin"], dependencies=[Depends(require("admin"))])
async def put_items(body: CatalogItems, services: ServicesDep) -> CatalogInfo:
    """Add or retitle items. The next recommendation decodes against the new catalog version."""
    titles = {item.item_id: item.title for item in body.items}
    limit = services.settings.max_title_tokens
    bad = {}
    for item_id, title in titles.items():
        try:
            tokens = len(services.builder.title_tokens(title))
        except ValueError as exc:
            bad[item_id] = str(exc)
            continue
        if tokens > limit:
            bad[item_id] = f"{tokens} tokens, more than max_title_tokens={limit}"
    if bad:
        raise ServiceError(422, "invalid_titles", "some titles cannot be decoded", details=bad)
    await services.store.put_items(titles)
    return catalog_info(await services.catalog.refresh())


@router.delete("/admin/catalog/items/{item_id}", response_model=CatalogInfo, tags=["admin"],
               dependencies=[Depends(require("admin"))])
async def remove_item(item_id: str, services: ServicesDep) -> CatalogInfo:
    await stored_title(services, item_id)
    await services.store.remove_items([item_id])
    return catalog_info(await services.catalog.refresh())
