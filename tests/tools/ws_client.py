"""Sends each argument over a WebSocket and prints each answer on its own line.

    python3 ws_client.py ws://127.0.0.2:8000/chat hello world
    python3 ws_client.py --hold 10 ws://127.0.0.2:8000/chat hello

With --hold N it then keeps the connection and prints "closed" as soon as the other side
closes it, or "open" if it is still open after N seconds.
"""

import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

args = sys.argv[1:]
hold = None
if args[:1] == ["--hold"]:
    hold, args = float(args[1]), args[2:]

with connect(args[0], open_timeout=5, close_timeout=2) as ws:
    for text in args[1:]:
        ws.send(text)
        print(ws.recv(timeout=5), flush=True)
    if hold is not None:
        try:
            ws.recv(timeout=hold)
            print("message", flush=True)
        except TimeoutError:
            print("open", flush=True)
        except ConnectionClosed:
            print("closed", flush=True)
