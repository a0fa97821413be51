"""Conformance suites. The fixtures, markers and reports come from the mqtt-harness pytest plugin
(harness.plugin, registered as a pytest11 entry point); see suites/README.md for how to write a suite test.

Put fixtures shared by several suite files here; keep ones used by a single file in that file.
"""
