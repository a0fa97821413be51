"""Plain result objects of a diagnosis: one LayerResult per layer walked, and the Diagnosis that holds them.

No I/O here. The layer names, their order and the exit code of each failing layer are the contract the CLI, the
JSON output and the docs share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LAYERS = ("dns", "tcp", "tls", "certificate", "client_certificate", "mqtt", "roundtrip")
# Exit code when a layer fails: 10 + its index (dns 10 ... roundtrip 16). 0: every layer passed; 2: usage.
EXIT_BASE = 10
EXIT_CODES = {name: EXIT_BASE + i for i, name in enumerate(LAYERS)}
EXIT_OK = 0
EXIT_USAGE = 2


@dataclass
class LayerResult:
    """One layer: whether it passed, how long it took (milliseconds), and what was seen (JSON-able detail)."""

    name: str
    ok: bool
    ms: float
    detail: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # one line for the human output
    cause: str | None = None  # when it failed: the cause id (device_map.CAUSES key)

    def to_json(self) -> dict[str, Any]:
        detail = dict(self.detail)
        if self.cause:
            detail.setdefault("cause", self.cause)
        if self.summary:
            detail.setdefault("summary", self.summary)
        return {"name": self.name, "ok": self.ok, "ms": round(self.ms, 2), "detail": detail}


@dataclass
class Diagnosis:
    """The whole walk: layers in order, stopping at the first that failed."""

    url: str
    layers: list[LayerResult] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)  # likely causes of the failure, most likely first (text)
    fixes: list[str] = field(default_factory=list)  # what to change, naming the CLI flag or device setting
    device: dict[str, Any] = field(default_factory=dict)  # {"esp_mqtt": {...}, "espeasy": {...}}
    settings: dict[str, Any] = field(default_factory=dict)  # the options the walk ran with (clock, device, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> LayerResult | None:
        return next((layer for layer in self.layers if not layer.ok), None)

    @property
    def failed_layer(self) -> str | None:
        failed = self.failed
        return failed.name if failed else None

    @property
    def cause(self) -> str | None:
        failed = self.failed
        return failed.cause if failed else None

    @property
    def exit_code(self) -> int:
        failed = self.failed
        return EXIT_OK if failed is None else EXIT_CODES[failed.name]

    def layer(self, name: str) -> LayerResult | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "failed_layer": self.failed_layer,
            "cause": self.cause,
            "layers": [layer.to_json() for layer in self.layers],
            "likely_causes": list(self.causes),
            "fixes": list(self.fixes),
            "device": self.device,
            "settings": self.settings,
            "notes": list(self.notes),
            "exit_code": self.exit_code,
        }

# The layer each failure cause belongs to (the cause ids of LayerResult.cause).
CAUSE_LAYERS = {
    "dns_failure": "dns",
    "tcp_refused": "tcp", "tcp_timeout": "tcp", "tcp_unreachable": "tcp", "device_connect_timeout": "tcp",
    "plain_port": "tls", "not_tls": "tls", "tls_closed": "tls", "tls_timeout": "tls", "tls_version_mismatch": "tls",
    "alpn_mismatch": "tls", "sni_rejected": "tls", "tls_handshake_failed": "tls",
    "unknown_ca": "certificate", "self_signed": "certificate", "missing_intermediate": "certificate",
    "no_certificate": "certificate", "expired": "certificate", "not_yet_valid": "certificate",
    "clock_skew": "certificate", "hostname_mismatch": "certificate",
    "client_cert_required": "client_certificate", "client_cert_rejected": "client_certificate",
    "bad_credentials": "mqtt", "not_authorized": "mqtt", "connack_refused": "mqtt", "no_connack": "mqtt",
    "closed_before_connack": "mqtt", "tls_port": "mqtt", "not_mqtt": "mqtt", "websocket_rejected": "mqtt",
    "subscribe_refused": "roundtrip", "publish_refused": "roundtrip", "no_message": "roundtrip",
    "roundtrip_failed": "roundtrip",
}
