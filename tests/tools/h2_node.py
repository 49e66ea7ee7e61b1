#!/usr/bin/env python3
"""An https node service that speaks HTTP/2 only (ALPN h2), for tests/front.rs: it answers
every request with JSON naming the node, the protocol, the connection it came on, the
path, the authority and the body. Prints "ready" once listening.

    h2_node.py --node a --listen 127.0.0.1:8443 --cert front.pem --key front.key
"""
import argparse, itertools, json, socket, ssl, threading

import h2.config, h2.connection, h2.events

connection_ids = itertools.count(1)


def serve(tls, node):
    connection_id = next(connection_ids)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    connection.initiate_connection()
    tls.sendall(connection.data_to_send())
    requests, bodies = {}, {}
    while True:
        try:
            data = tls.recv(65536)
        except OSError:
            return
        if not data:
            return
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = {k.decode(): v.decode() for k, v in event.headers}
                bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers = requests.pop(event.stream_id)
                answer = json.dumps({
                    "node": node,
                    "protocol": "h2",
                    "connection": connection_id,
                    "method": headers.get(":method"),
                    "path": headers.get(":path"),
                    "authority": headers.get(":authority"),
                    "forwarded": headers.get("forwarded"),
                    "body": bodies.pop(event.stream_id).decode("utf-8", "replace"),
                }).encode()
                connection.send_headers(event.stream_id, [
                    (":status", "200"), ("content-type", "application/json"),
                    ("content-length", str(len(answer)))])
                connection.send_data(event.stream_id, answer, end_stream=True)
        tls.sendall(connection.data_to_send())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server((host, int(port)))
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        try:
            tls = context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()
            continue
        threading.Thread(target=serve, args=(tls, args.node), daemon=True).start()


if __name__ == "__main__":
    main()
