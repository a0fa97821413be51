"""The sans-IO MQTT core: packet model, wire codec and client session state machine.

Nothing in this package touches a socket or reads a clock; drivers feed bytes and time in.
"""

from harness.core.packets import *  # noqa: F401,F403
from harness.core.codec import Decoder, decode, encode, summary  # noqa: F401
