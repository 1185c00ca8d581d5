"""A real local HTTP server standing in for an OpenAI-compatible provider or judge: each POST is
answered by `respond(path, headers, body) -> (status, payload, headers)`; a payload that is bytes
(an event stream) is sent as it is, anything else as JSON."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_json(respond) -> ThreadingHTTPServer:
    """Started on a free port, serving on a daemon thread; `shutdown()` and `server_close()` it."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, extra = respond(self.path, headers, body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json",
                               "Content-Length": str(len(data)), **extra}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_port}/v1"
