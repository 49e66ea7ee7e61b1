"""A node's own services for the front-end tests: an HTTP service that says which node it
is and what headers it got, and a WebSocket echo service. Runs until killed.

    python3 node_service.py --node a --http 127.0.0.1:8080 --ws 127.0.0.1:8081
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from websockets.sync.server import serve


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--ws", required=True)
    args = parser.parse_args()

    open_connections = [0]
    counting = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        # How many connections are open now, and which one a request came on, show how
        # a reverse proxy in front keeps and closes its connections.
        def setup(self):
            super().setup()
            with counting:
                open_connections[0] += 1

        def finish(self):
            with counting:
                open_connections[0] -= 1
            super().finish()

        def answer(self, body_in):
            body = json.dumps(
                {
                    "node": args.node,
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body_in.decode("utf-8", "replace"),
                    "client_port": self.client_address[1],
                    "open_connections": open_connections[0],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(b"")

        def do_POST(self):
            if self.path == "/early":
                # A backend that refuses an upload at once and reads none of it for a while.
                self.send_response(413)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.wfile.flush()
                time.sleep(8)
                self.close_connection = True
                return
            length = int(self.headers.get("Content-Length", "0"))
            self.answer(self.rfile.read(length))

        def log_message(self, *_):
            pass

    host, port = args.http.rsplit(":", 1)
    http = ThreadingHTTPServer((host, int(port)), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    def echo(connection):
        for message in connection:
            connection.send(f"{args.node}:{message}")

    host, port = args.ws.rsplit(":", 1)
    with serve(echo, host, int(port)) as server:
        print("ready", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
