"""An OTLP/HTTP trace receiver for load runs: takes every export on a loopback port, answers 200, keeps nothing.

Usage: python3 loadtest/otlp_sink.py PORT. It counts the exports and their bytes, and prints the totals when it
is stopped (SIGTERM), so that a run shows the gateway did export.
"""

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

totals = {"exports": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        totals["exports"] += 1
        totals["bytes"] += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def stop(*_):
    print(f"otlp sink: {totals['exports']} exports, {totals['bytes']} bytes", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
