"""The baseline of bench/images.sh: the bare-metal seed's way of keeping images, as a tiny
HTTP server. Every version is stored as a full .img file; a download streams the whole file in
1,500-byte writes, as the original control server does. Uploads are the raw body (curl
--data-binary) rather than multipart, which moves the same bytes.

To spare the benchmark machine's disk, runs of zeros are written as holes; the bytes the
seed stores are reported as the files' full (apparent) sizes, which is what it writes.

  python3 bench/seed_baseline.py PORT DIR
"""

import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = sys.argv[2]
BLOCK = 1500
ZERO = bytes(1 << 16)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        m = re.fullmatch(r"/image/([0-9a-z-]+)", self.path)
        if not m:
            return self.send_error(404)
        uuid = m.group(1)
        n = 1 + sum(1 for f in os.listdir(DIR) if f.startswith(uuid + "-"))
        left = int(self.headers["Content-Length"])
        path = os.path.join(DIR, f"{uuid}-{n}.img")
        with open(path, "wb") as f:
            while left:
                block = self.rfile.read(min(left, 1 << 16))
                if not block:
                    break
                left -= len(block)
                if block == ZERO[: len(block)]:
                    f.seek(len(block), os.SEEK_CUR)
                else:
                    f.write(block)
            f.truncate()
        body = f"Successfully uploaded image: {n}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        m = re.fullmatch(r"/image/([0-9a-z-]+)/(\d+)", self.path)
        path = m and os.path.join(DIR, f"{m.group(1)}-{m.group(2)}.img")
        if not path or not os.path.exists(path):
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        with open(path, "rb") as f:
            while True:
                block = f.read(BLOCK)
                if not block:
                    break
                self.wfile.write(block)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
