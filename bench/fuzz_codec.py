"""Deep fuzz of the codec: a million inputs or more, random bytes and mutated valid packets, fed in random chunk
sizes to the streaming decoder of every MQTT version. Only typed errors may come out: a ProtocolError that names
its statement, after which the decoder stays failed; every packet it accepts re-encodes to an equal packet.

    .venv/bin/python -m bench.fuzz_codec                      # 1,000,000 inputs, seed 1
    .venv/bin/python -m bench.fuzz_codec --inputs 5000000 --seed 7 --json out.json

CI runs the same check through hypothesis at its profile's size (tests/test_codec_malformed.py); this is the long
run. A finding prints the input as hex and exits 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time

from harness.core.codec import Decoder, decode, encode
from harness.core.packets import MQTT_3_1, MQTT_3_1_1, MQTT_5, PacketType
from harness.errors import ProtocolError

VERSIONS = (MQTT_3_1, MQTT_3_1_1, MQTT_5)


class Finding(AssertionError):
    """The codec did something other than accept-and-round-trip or a typed ProtocolError."""


def feed_all(version: int, data: bytes, sizes: list[int]) -> str | None:
    """Feed `data` in chunks of `sizes` (cycled). Returns None when every byte was accepted, else the statement of
    the ProtocolError that stopped it. Raises Finding for anything else."""
    decoder = Decoder(version)
    pos, i = 0, 0
    try:
        while pos < len(data):
            size = sizes[i % len(sizes)]
            for packet, raw in decoder.feed_raw(data[pos:pos + size]):
                level = packet.protocol_level if packet.TYPE is PacketType.CONNECT else version
                again = decode(encode(packet, level), level)
                if again != packet:
                    raise Finding(f"re-encoding changed the packet: {packet!r} -> {again!r} (raw {raw.hex()})")
                version = level
            pos += size
            i += 1
    except ProtocolError as exc:
        if not exc.statement:
            raise Finding(f"ProtocolError without a statement: {exc}") from None
        try:
            decoder.feed(b"\x00")
        except ProtocolError:
            return exc.statement
        raise Finding("the decoder accepted more bytes after a ProtocolError") from None
    return None


def seed_packets(count: int) -> dict[int, list[bytes]]:
    """Valid encoded packets of every type per version, drawn once from the test suite's hypothesis strategies."""
    sys.path.insert(0, "tests")
    from hypothesis import HealthCheck, given, settings

    from strategies import packets

    out: dict[int, list[bytes]] = {}
    for version in (MQTT_3_1_1, MQTT_5):
        out[version] = _draw(version, count, given, settings, HealthCheck, packets)
    out[MQTT_3_1] = out[MQTT_3_1_1]
    return out


def _draw(version, count, given, settings, health_check, packets) -> list[bytes]:
    found: list[bytes] = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(health_check))
    @given(packets(version))
    def collect(packet):
        found.append(encode(packet, version))

    collect()
    return found


def mutate(rng: random.Random, wire: bytearray) -> bytes:
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(("flip", "truncate", "insert", "delete", "set"))
        at = rng.randrange(max(1, len(wire)))
        if kind == "flip" and wire:
            wire[at] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del wire[at:]
        elif kind == "insert":
            wire[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == "delete":
            del wire[at:at + rng.randint(1, 8)]
        elif kind == "set" and wire:
            wire[at] = rng.choice((0x00, 0x7F, 0x80, 0xFF, 0xC0, 0xED))
    return bytes(wire)


def run(inputs: int, seed: int, progress: bool = True) -> dict:
    rng = random.Random(seed)
    seeds = seed_packets(300)
    outcomes: collections.Counter = collections.Counter()
    statements: collections.Counter = collections.Counter()
    started = last = time.monotonic()
    for n in range(1, inputs + 1):
        version = VERSIONS[n % 3]
        if n % 2:
            data = rng.randbytes(rng.randint(0, 300))
        else:
            pool = seeds[version]
            data = mutate(rng, bytearray(b"".join(rng.choice(pool) for _ in range(rng.randint(1, 3)))))
        sizes = [rng.choice((rng.randint(1, 32), rng.randint(33, 1 << 16))) for _ in range(rng.randint(1, 4))]
        try:
            statement = feed_all(version, data, sizes)
        except Finding as exc:
            print(f"FINDING at input {n} (seed {seed}, version {version}): {exc}\n  input: {data.hex()}\n"
                  f"  chunks: {sizes}", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception as exc:  # noqa: BLE001 - an untyped exception is exactly what the fuzz looks for
            print(f"FINDING at input {n} (seed {seed}, version {version}): {type(exc).__name__}: {exc}\n"
                  f"  input: {data.hex()}\n  chunks: {sizes}", file=sys.stderr)
            raise SystemExit(1) from None
        outcomes["accepted" if statement is None else "rejected"] += 1
        if statement:
            statements[statement] += 1
        now = time.monotonic()
        if progress and now - last > 5:
            last = now
            print(f"  {n:,} inputs, {n / (now - started):,.0f}/s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    return {"inputs": inputs, "seed": seed, "seconds": round(elapsed, 1), "per_second": round(inputs / elapsed),
            "accepted": outcomes["accepted"], "rejected_typed": outcomes["rejected"], "findings": 0,
            "distinct_statements": len(statements), "top_statements": statements.most_common(10)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz_codec", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=1_000_000, help="how many inputs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="random seed; a finding reproduces with the same seed")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    args = p.parse_args(argv)
    if args.inputs < 1:
        p.error("--inputs: give 1 or more")
    result = run(args.inputs, args.seed)
    print(f"{result['inputs']:,} inputs in {result['seconds']} s ({result['per_second']:,}/s), seed {result['seed']}: "
          f"{result['accepted']:,} without an error (whole packets round-tripped, or a packet still incomplete), {result['rejected_typed']:,} rejected with a typed "
          f"ProtocolError naming its statement ({result['distinct_statements']} distinct), 0 findings")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
