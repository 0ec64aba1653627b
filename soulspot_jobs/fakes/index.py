"""``KeyIndex``: which entries of a fake's catalog have a key (a word, an ISRC), so that a search
reads only the entries that can match, however big the catalog (the load bench's has 20,000)."""

from __future__ import annotations

from collections.abc import Iterable


class KeyIndex:
    """Key -> positions of the entries that have it."""

    def __init__(self) -> None:
        self._positions: dict[str, set[int]] = {}

    def add(self, position: int, keys: Iterable[str]) -> None:
        """Note that the entry at ``position`` has each of ``keys``."""
        for key in keys:
            self._positions.setdefault(key, set()).add(position)

    def having_all(self, keys: Iterable[str]) -> list[int]:
        """Positions of the entries that have every one of ``keys`` (none for no key), in order."""
        found = sorted((self._positions.get(key, set()) for key in keys), key=len)
        if not found:
            return []
        return sorted(set(found[0]).intersection(*found[1:]))
