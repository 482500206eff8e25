"""Python client for murmur, the peer-to-peer event replication daemon.

Talks HTTP/1.1 + JSON to the local daemon over its Unix socket, with the standard
library only::

    import murmur

    c = murmur.Client()                      # $MURMUR_SOCKET, or <data dir>/murmur.sock
    p = c.publish("sensors/kitchen/temp", "21.5")
    for ev in c.follow("sensors/#", from_offset=p.offset):
        print(ev.offset, ev.topic, ev.text())
"""

from .client import *  # noqa: F401,F403 (the names in client.__all__)
from .client import __all__

__version__ = "0.1.0"
