"""Human-readable and JSON output of a Diagnosis."""

from __future__ import annotations

import json

from harness.diagnose.layers import LAYERS, Diagnosis


def to_json(d: Diagnosis) -> str:
    return json.dumps(d.to_json(), indent=2, default=str)


def to_text(d: Diagnosis) -> str:
    lines = [f"diagnose {d.url}"]
    walked = {layer.name for layer in d.layers}
    for layer in d.layers:
        mark = "ok  " if layer.ok else "FAIL"
        lines.append(f"  {mark} {layer.name:<18} {layer.ms:8.1f} ms  {layer.summary}")
        if layer.name == "certificate":
            for i, cert in enumerate(layer.detail.get("chain", [])):
                names = ", ".join(cert["sans"]["dns"] + cert["sans"]["ip"]) or "-"
                lines.append(f"       [{i}] subject {cert['subject']}")
                lines.append(f"           issuer  {cert['issuer']}")
                lines.append(f"           SANs    {names}")
                lines.append(f"           valid   {cert['not_before'][:19]} .. {cert['not_after'][:19]}")
    skipped = [name for name in LAYERS if name not in walked]
    failed = d.failed
    if failed is None:
        lines.append("result: every layer passed" + (f" ({', '.join(skipped)}: not applicable)" if skipped else ""))
    else:
        lines.append(f"result: {failed.name} failed ({failed.cause})")
        if d.causes:
            lines.append("likely causes:")
            lines.extend(f"  - {text}" for text in d.causes)
        if d.fixes:
            lines.append("fix:")
            lines.extend(f"  - {text}" for text in d.fixes)
    if d.device:
        lines.append("a device in the same situation:")
        for key, label in (("esp_mqtt", "esp-mqtt"), ("espeasy", "ESPEasy")):
            report = d.device.get(key)
            if not report:
                continue
            lines.append(f"  {label:<9} (timeout {report.get('timeout_ms')} ms): {report.get('summary')}")
            for note in report.get("notes", []):
                lines.append(f"            note: {note}")
    for note in d.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
