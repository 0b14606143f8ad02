"""Redis key names (documented in service/README.md): one place, so no module spells a key by hand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "hatrec"

    @property
    def catalog(self) -> str:  # hash: item id -> title
        return f"{self.prefix}:catalog"

    @property
    def catalog_version(self) -> str:  # integer, incremented by every catalog change
        return f"{self.prefix}:catalog:version"

    @property
    def popularity(self) -> str:  # sorted set: item id -> interaction count
        return f"{self.prefix}:popularity"

    def history(self, user_id: str) -> str:  # list of item ids, oldest first, capped
        return f"{self.prefix}:history:{user_id}"
