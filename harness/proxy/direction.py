"""The two directions of a proxied connection, named as Toxiproxy names its streams."""

from __future__ import annotations

UPSTREAM = "upstream"  # client -> broker
DOWNSTREAM = "downstream"  # broker -> client
BOTH = "both"
DIRECTIONS = (UPSTREAM, DOWNSTREAM)

_ALIASES = {
    "upstream": UPSTREAM, "up": UPSTREAM, "to_broker": UPSTREAM, "c2b": UPSTREAM,
    "downstream": DOWNSTREAM, "down": DOWNSTREAM, "to_client": DOWNSTREAM, "b2c": DOWNSTREAM,
    "both": BOTH, "any": BOTH, None: BOTH,
}


def parse_direction(value: str | None, *, allow_both: bool = True) -> str:
    """'upstream' | 'downstream' | 'both' (or an alias such as 'to_broker') -> the canonical name."""
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in _ALIASES or (_ALIASES[key] == BOTH and not allow_both):
        allowed = "upstream (client->broker), downstream (broker->client)" + (", both" if allow_both else "")
        raise ValueError(f"unknown direction {value!r}; use {allowed}")
    return _ALIASES[key]


def opposite(direction: str) -> str:
    return DOWNSTREAM if direction == UPSTREAM else UPSTREAM


def expand(direction: str) -> tuple[str, ...]:
    """'both' -> (upstream, downstream); a single direction -> itself."""
    return DIRECTIONS if direction == BOTH else (direction,)
