"""Redis key names (documented in service/README.md): one place, so no module spells a key by hand.

Hash tags (the part in braces) decide a key's slot in a Redis Cluster: the catalog, its version and
popularity share the prefix's tag, so a catalog change is one single-slot transaction; each user's
history has the user's own tag, so histories spread over the cluster. Sessions before hash tags used
the same names without braces (`legacy`); `Store.migrate_legacy_keys` renames them once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "hatrec"
    tagged: bool = True

    def _shared(self, name: str) -> str:
        return f"{{{self.prefix}}}:{name}" if self.tagged else f"{self.prefix}:{name}"

    @property
    def catalog(self) -> str:  # hash: item id -> title
        return self._shared("catalog")

    @property
    def catalog_version(self) -> str:  # integer, incremented by every catalog change
        return self._shared("catalog:version")

    @property
    def catalog_changes(self) -> str:  # sorted set: item id -> the catalog version that last changed it
        return self._shared("catalog:changes")

    @property
    def catalog_changes_floor(self) -> str:  # integer: changes up to this version may be missing from the log
        return self._shared("catalog:changes:floor")

    @property
    def popularity(self) -> str:  # sorted set: item id -> interaction count
        return self._shared("popularity")

    def history(self, user_id: str) -> str:  # list of item ids, oldest first, capped
        return f"{self.prefix}:history:{{{user_id}}}" if self.tagged else f"{self.prefix}:history:{user_id}"

    @property
    def history_pattern(self) -> str:  # SCAN pattern of every history key
        return f"{self.prefix}:history:*"

    @property
    def legacy(self) -> "Keys":
        return Keys(self.prefix, tagged=False)
