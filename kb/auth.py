"""API keys: read-only and read-write roles, checked in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from kb.errors import ConfigError

if TYPE_CHECKING:
    from kb.config import Settings


class Role(StrEnum):
    READ = "read"
    WRITE = "write"

    def allows(self, needed: Role) -> bool:
        return self is Role.WRITE or needed is Role.READ


ROLE_NAMES = {"read": Role.READ, "ro": Role.READ, "write": Role.WRITE, "rw": Role.WRITE}
MIN_KEY_CHARS = 16


def sendable(key: str) -> bool:
    """Printable ASCII without spaces: what an Authorization header carries as it is, the
    rule for configured keys and for the key kb's client sends. A header carries Latin-1: a
    key beyond ASCII worked from kb's client (UTF-8) and never from curl; spaces and control
    characters break the header."""
    return all("!" <= char <= "~" for char in key)


def _digest(key: str) -> bytes:
    # Comparing digests keeps the comparison's length fixed, whatever the key's length.
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class KeyRing:
    """The configured keys, as digests; empty means the API is open."""

    entries: tuple[tuple[bytes, Role], ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> KeyRing:
        """The keys KB_API_KEYS configures."""
        return cls.parse(settings.api_keys.get_secret_value() if settings.api_keys else None)

    @classmethod
    def parse(cls, spec: str | None) -> KeyRing:
        """`role:key` entries separated by commas (KB_API_KEYS), role read/ro or write/rw.
        None or "" is no keys (an open API); a value with no entries (",", " ") is refused:
        whoever set it meant to require keys, and it left the API open without a word."""
        entries = cls._entries(spec or "")
        if spec and not entries:
            raise ConfigError(
                "KB_API_KEYS is set but holds no 'read:KEY' or 'write:KEY' entry; "
                "unset it for an open API"
            )
        return cls(tuple(entries))

    @staticmethod
    def _entries(spec: str) -> list[tuple[bytes, Role]]:
        entries: list[tuple[bytes, Role]] = []
        seen: dict[bytes, int] = {}  # digest -> the entry's position
        for position, raw in enumerate(spec.split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            name, sep, key = entry.partition(":")
            role = ROLE_NAMES.get(name.strip().lower())
            # Messages name the entry's position only: a key must never reach a log.
            if not sep or role is None:
                raise ConfigError(f"KB_API_KEYS entry {position} is not 'read:KEY' or 'write:KEY'")
            if len(key) < MIN_KEY_CHARS or not sendable(key):
                raise ConfigError(
                    f"KB_API_KEYS entry {position}: keys need at least {MIN_KEY_CHARS} "
                    "characters, printable ASCII without spaces"
                )
            digest = _digest(key)
            if digest in seen:
                raise ConfigError(
                    f"KB_API_KEYS entries {seen[digest]} and {position} hold the same key"
                )
            seen[digest] = position
            entries.append((digest, role))
        return entries

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def describe(self) -> str:
        """What the start-up log says of authorization (counts only, never a key)."""
        if not self.enabled:
            return "API keys: none (KB_API_KEYS unset): every route is open to every caller"
        writers = sum(role is Role.WRITE for _, role in self.entries)
        return (
            f"API keys: {writers} read-write, {len(self.entries) - writers} read-only; "
            "every route but /health needs one"
        )

    def role_of(self, presented: str) -> Role | None:
        """The role of a presented key, or None; every configured key is compared, so the
        time taken does not tell which key (or how much of one) matched."""
        digest = _digest(presented)
        found: Role | None = None
        for known, role in self.entries:
            if hmac.compare_digest(digest, known):
                found = role
        return found
