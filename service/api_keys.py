"""API keys and their scopes: who may call what (threat model: service/README.md, "Security").

Scopes:
  read     POST /recommend and the catalog reads, for any user id
  trusted  GET /users/{id}/history; with read: combine `exclude_seen` (the stored history) with an
           allow-list, which tells exactly which of the listed items a user has seen
  write    POST /events, DELETE /users/{id}/history
  admin    the catalog writes (/admin/...)

Keys come from HATREC_API_KEYS (JSON) or the file HATREC_API_KEYS_FILE, both a list of
`{"name": ..., "key": ..., "scopes": [...]}`; HATREC_API_KEY is one key with every scope. With no key at
all every route is open, which the service allows only when it listens on a loopback address.

    python -m service.api_keys --out var/api_keys.json    # generate a reader, a writer and an admin key
    python -m service.api_keys --out K --redis-password P # and a Redis password (compose's first start)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, SecretStr, TypeAdapter

Scope = Literal["read", "trusted", "write", "admin"]
ALL_SCOPES: frozenset[str] = frozenset(Scope.__args__)


class ApiKey(BaseModel):
    name: str
    key: SecretStr
    scopes: frozenset[Scope]


API_KEY_LIST = TypeAdapter(list[ApiKey])


def configured_keys(keys: list[ApiKey], keys_file: Path | None, single_key: SecretStr | None) -> list[ApiKey]:
    keys = list(keys)
    if keys_file is not None:
        keys += API_KEY_LIST.validate_json(keys_file.read_text())
    if single_key is not None:
        keys.append(ApiKey(name="api_key", key=single_key, scopes=ALL_SCOPES))
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_ring(keys: list[ApiKey], keys_file: Path | None, single_key: SecretStr | None, host: str) -> KeyRing:
    """The configured keys. With none at all every route is open, which only a service listening on a loopback
    address may be."""
    ring = KeyRing(configured_keys(keys, keys_file, single_key))
    if ring.open and not is_loopback(host):
        raise ValueError(f"no API keys, and HATREC_HOST={host} is not a loopback address: every route would be open "
                         "to the network. Set HATREC_API_KEYS or HATREC_API_KEYS_FILE (python -m service.api_keys "
                         "generates keys), or listen on 127.0.0.1")
    return ring


class KeyRing:
    """Which scopes a presented key has."""

    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    @property
    def open(self) -> bool:
        return not self.keys

    def scopes(self, presented: str | None) -> frozenset[str]:
        """The presented key's scopes (every scope when no key is configured; none for an unknown key)."""
        if self.open:
            return ALL_SCOPES
        if not presented:
            return frozenset()
        given = presented.encode()  # bytes: compare_digest refuses non-ASCII str, and a header may carry any byte
        for key in self.keys:  # every key compared, in constant time each
            if secrets.compare_digest(given, key.key.get_secret_value().encode()):
                return key.scopes
        return frozenset()


def generate() -> list[dict]:
    return [{"name": name, "key": secrets.token_urlsafe(32), "scopes": scopes}
            for name, scopes in (("reader", ["read"]), ("writer", ["write"]), ("admin", ["read", "trusted", "write", "admin"]))]


def write_new(path: Path, text: str, mode: int) -> bool:
    """Create `path` with `mode` and `text`; False, leaving it alone, if it exists."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=mode)  # the mode before any secret is written
    path.write_text(text)
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the keys here (never overwritten; default: print them)")
    p.add_argument("--redis-password", type=Path,
                   help="also write a random Redis password to this file, if it does not exist (readable by the "
                        "Redis container's user too: keep it in a volume only the service and Redis mount)")
    args = p.parse_args(argv)
    if args.redis_password is not None:
        write_new(args.redis_password, secrets.token_urlsafe(32) + "\n", 0o644)
    text = json.dumps(generate(), indent=1) + "\n"
    if args.out is None:
        print(text, end="")
    else:
        print(f"wrote {args.out}" if write_new(args.out, text, 0o600) else f"{args.out} exists: kept")


if __name__ == "__main__":
    main()
