"""An HTTPS receiver for Weir's tests: a real TLS peer (Python's ssl, i.e. OpenSSL) with the test CA's
server certificate. Usage: https_receiver.py CERT KEY. Prints `port N` once listening on 127.0.0.1,
then one JSON line per request received: {"method", "path", "authorization", "body"}. GET /redirect/N answers 302 to
/redirect/N+1 (for redirect bounds); any other path answers 200."""

import http.server
import json
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        auth = self.headers.get("Authorization")
        print(json.dumps({"method": self.command, "path": self.path, "authorization": auth, "body": body}), flush=True)

    def do_GET(self):
        self._record()
        if self.path.startswith("/redirect/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{n + 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._ok()

    def do_POST(self):
        self._record()
        self._ok()

    def _ok(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
