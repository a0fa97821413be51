"""The device half: an ESP32 (esp-mqtt) under test over serial, driven through docs/dut-protocol.md.

lines.py       framing of protocol lines (both sides)
esp_codes.py   esp-mqtt / esp-tls / mbedTLS / errno names and numbers
"""
