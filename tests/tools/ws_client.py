"""Sends each argument over a WebSocket and prints each answer on its own line.

    python3 ws_client.py ws://127.0.0.2:8000/chat hello world
"""

import sys

from websockets.sync.client import connect

with connect(sys.argv[1], open_timeout=5, close_timeout=2) as ws:
    for text in sys.argv[2:]:
        ws.send(text)
        print(ws.recv(timeout=5), flush=True)
