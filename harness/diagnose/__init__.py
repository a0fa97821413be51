"""`mqtt-harness diagnose`: walk a connection layer by layer (dns, tcp, tls, certificate, client_certificate,
mqtt, roundtrip), time each, stop at the first that fails, say why and what to change, and what an esp-mqtt or
ESPEasy device would report in the same situation.

    from harness.diagnose import Options, diagnose, StubResolver
    result = await diagnose("mqtts://broker:8883", Options(ca="ca.pem", device="espeasy", device_timeout_ms=100))
    result.failed_layer, result.cause, result.to_json()

Modules: layers (result objects, exit codes), resolver (injectable; StubResolver for tests), tls_inspect
(handshake recording, chain checks), device_map (device reports as tables), advice (causes and fixes),
runner (the walk), render (text and JSON), slow_listener (a listener whose TCP connect is really slow),
certs (test chains with an intermediate CA).
"""

from harness.diagnose.layers import EXIT_CODES, LAYERS, Diagnosis, LayerResult
from harness.diagnose.resolver import StubResolver, system_resolve
from harness.diagnose.runner import Options, UsageError, diagnose

__all__ = ["EXIT_CODES", "LAYERS", "Diagnosis", "LayerResult", "Options", "StubResolver", "UsageError", "diagnose",
           "system_resolve"]
