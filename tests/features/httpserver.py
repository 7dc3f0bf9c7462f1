"""A local HTTP server on 127.0.0.1 serving good and bad image responses (no internet needed)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImageServer:
    """Routes: path -> (status, content-type, body, extra headers); ``/flaky*`` fails once with 503."""

    def __init__(self, routes: dict[str, tuple[int, str, bytes, dict[str, str]]]) -> None:
        self.routes = routes
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path.startswith("/flaky") and server.hits[self.path] == 1:
                    self.send_response(503)
                    self.end_headers()
                    return
                code, ctype, body, headers = server.routes.get(self.path, (404, "text/html", b"nope", {}))
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", headers.pop("Content-Length", str(len(body))))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
