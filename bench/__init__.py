"""Benchmarks of the harness client and codec against other MQTT clients (not tests: nothing here asserts)."""
