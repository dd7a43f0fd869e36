"""`--serve`: a small web page for headless devices, with the live annotated frames (MJPEG), the current labels and
scores, the stream's state, and a form that changes the labels while the stream runs.

Standard library only (http.server), bound to localhost unless a host is given. Endpoints: `/` the page,
`/stream.mjpg` the frames, `/state` the latest result as JSON, `POST /labels` new labels (form field `labels`,
comma-separated).
"""

from __future__ import annotations

import contextlib
import errno
import html
import json
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edgeclip.errors import EdgeClipError, InputError

BOUNDARY = "edgeclipframe"
DEFAULT_HOST = "127.0.0.1"


def parse_serve(value: str) -> tuple[str, int]:
    """--serve [HOST:]PORT -> (host, port); the host defaults to localhost, so nothing is exposed by surprise."""
    text = value.strip()
    host, port_text = DEFAULT_HOST, text
    if text.startswith("["):  # [::1]:8080
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise InputError(f"--serve {value!r}: write an IPv6 host as [::1]:8080")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
        if ":" in host:  # ::1:8080 could be an address alone
            raise InputError(f"--serve {value!r}: write an IPv6 host as [::1]:8080")
        host = host or DEFAULT_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(f"--serve {value!r}: give a port (8080) or HOST:PORT (0.0.0.0:8080 to be reachable)")
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # On POSIX SO_REUSEADDR still refuses a port another program listens on (EADDRINUSE below), and it lets a
    # restarted stream take its port back at once, while the last run's viewer connections sit in TIME_WAIT. On
    # Windows it would let two servers share the port, so it stays off there.
    allow_reuse_address = sys.platform != "win32"

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            with contextlib.suppress(OSError):  # [::]: IPv4 clients too, where the system allows both on one socket
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _server(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> _Server:
    """A server of the host's address family (IPv4 or IPv6, as the host resolves)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    kind = type("_Server", (_Server,), {"address_family": family})
    return kind((host, port), handler)


class WebPage:
    """The page's server. `publish` hands it each annotated frame and result; it serves them to every client."""

    def __init__(
        self,
        host: str,
        port: int,
        on_labels: Callable[[Sequence[str]], None],
        *,
        title: str = "edgeclip stream",
        quality: int = 80,
    ) -> None:
        self.on_labels = on_labels
        self.title = title
        self.quality = quality
        self.frames_sent = 0
        self.clients = 0
        self._cond = threading.Condition()
        self._seq = 0
        self._image: np.ndarray | None = None
        self._jpeg: bytes | None = None
        self._jpeg_seq = -1
        self._state: dict[str, Any] = {"state": "starting", "labels": [], "scores": [], "label_set": []}
        self._closing = False
        try:
            self._server = _server(host, port, self._handler())
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(
                    f"--serve: port {port} on {host} is in use by another program; choose another port (--serve 8081)"
                ) from exc
            raise InputError(f"--serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgeclip-web", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebPage:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():  # shutdown() waits for serve_forever: forever, if it never ran
            self._server.shutdown()
        self._server.server_close()

    def publish(self, image: np.ndarray | None, state: dict[str, Any]) -> None:
        """The newest annotated frame (BGR) and the state the page shows."""
        with self._cond:
            if image is not None:
                self._image = image
                self._seq += 1
            self._state = state
            self._cond.notify_all()

    def state(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._state)

    def _next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        import cv2

        with self._cond:
            if self._seq <= after and not self._closing:
                self._cond.wait(timeout)
            if self._closing or self._image is None or self._seq <= after:
                return after, None
            seq, image = self._seq, self._image
            if self._jpeg_seq == seq:
                return seq, self._jpeg
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return seq, None
        jpeg = encoded.tobytes()
        with self._cond:
            self._jpeg, self._jpeg_seq = jpeg, seq
        return seq, jpeg

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        page = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edgeclip"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: stderr carries the stream's report
                pass

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path == "/":
                    self._send(200, "text/html; charset=utf-8", page._page().encode())
                elif path == "/state":
                    self._send(200, "application/json", json.dumps(page.state()).encode())
                elif path == "/stream.mjpg":
                    self._mjpeg()
                else:
                    self._send(404, "text/plain", b"not found: try / or /stream.mjpg or /state\n")

            def do_POST(self) -> None:
                if urllib.parse.urlsplit(self.path).path != "/labels":
                    self._send(404, "text/plain", b"not found: POST /labels\n")
                    return
                origin = self.headers.get("Origin")
                if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != self.headers.get("Host"):
                    # another site's page in the viewer's browser must not change the labels (a form posted across
                    # sites carries its Origin); the page itself, curl and scripts are served
                    self._send(403, "text/plain", b"error: label changes from another site's page are refused\n")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    self._send(400, "text/plain", b"error: a bad Content-Length\n")
                    return
                form = urllib.parse.parse_qs(self.rfile.read(min(length, 1 << 20)).decode("utf-8", "replace"))
                text = (form.get("labels") or [""])[0]
                wants_json = "application/json" in (self.headers.get("Accept") or "")
                try:
                    from edgeclip import zeroshot

                    labels = zeroshot.labels_from_text(text)
                    page.on_labels(labels)
                except EdgeClipError as exc:
                    if wants_json:
                        self._send(400, "application/json", json.dumps({"error": str(exc)}).encode())
                    else:
                        self._send(400, "text/plain; charset=utf-8", f"error: {exc}\n".encode())
                    return
                if wants_json:
                    self._send(200, "application/json", json.dumps({"labels": list(labels)}).encode())
                else:
                    self.send_response(303)
                    self.send_header("Location", "/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _mjpeg(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                with page._cond:
                    page.clients += 1
                seq = -1
                try:
                    # Each part is followed at once by the next boundary and headers: a browser shows a part only
                    # when the next one has begun, and the next frame may be long in coming (a camera reconnecting).
                    part = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
                    self.wfile.write(part)
                    while not page._closing:
                        seq, jpeg = page._next_jpeg(seq, timeout=1.0)
                        if jpeg is None:
                            continue
                        self.wfile.write(jpeg + b"\r\n" + part)
                        self.wfile.flush()
                        page.frames_sent += 1
                except OSError:  # BrokenPipeError, ConnectionResetError, TimeoutError
                    pass  # the viewer went away
                finally:
                    with page._cond:
                        page.clients -= 1

        return Handler

    def _page(self) -> str:
        labels = ", ".join(self.state().get("label_set", []))
        return _PAGE.replace("{title}", html.escape(self.title)).replace("{labels}", html.escape(labels, quote=True))


def page_state(result: Any, fps: float, state: str, label_set: Sequence[str], stats: Any) -> dict[str, Any]:
    """What /state serves and the page shows, from a Result."""
    return {
        "state": state,
        "frame": result.frame if result is not None else None,
        "labels": list(result.labels) if result is not None else [],
        "scores": [round(s, 4) for s in result.scores] if result is not None else [],
        "latency_ms": round(result.latency_ms, 2) if result is not None else None,
        "fps": round(fps, 2),
        "label_set": list(label_set),
        "stats": dict(vars(stats)),
        "time": time.time(),
    }


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 1rem; background: #111; color: #eee; }
main { display: flex; gap: 1.5rem; flex-wrap: wrap; align-items: flex-start; }
img { width: min(640px, 100%); height: auto; background: #000; border: 1px solid #333; }
section { flex: 1 1 20rem; max-width: 32rem; }
table { border-collapse: collapse; width: 100%; }
td { padding: 0.15rem 0.6rem; } td.score { text-align: right; font-variant-numeric: tabular-nums; }
#state { font-weight: bold; } .bad { color: #fb4; }
input[type=text] { width: 100%; box-sizing: border-box; padding: 0.3rem; margin: 0.3rem 0; }
form { margin-top: 1rem; } #message { color: #8c8; }
</style></head>
<body>
<h1>{title}</h1>
<main>
<img id="frames" src="/stream.mjpg" alt="live frames">
<section>
<p>state: <span id="state">starting</span> &middot; <span id="fps">-</span> FPS &middot;
<span id="latency">-</span> ms &middot; frame <span id="frame">-</span></p>
<table id="top"><tbody></tbody></table>
<form id="labels-form" method="post" action="/labels">
<label for="labels">labels (comma-separated)</label><br>
<input type="text" id="labels" name="labels" value="{labels}">
<button type="submit">change labels</button>
</form>
<p id="message"></p>
<p>labels now: <span id="label-set">{labels}</span></p>
</section>
</main>
<script>
const $ = (id) => document.getElementById(id);
async function refresh() {
  try {
    const s = await (await fetch('/state', {cache: 'no-store'})).json();
    $('state').textContent = s.state;
    $('state').className = (s.state === 'running' || s.state === 'recovered') ? '' : 'bad';
    $('fps').textContent = s.fps.toFixed(1);
    $('latency').textContent = s.latency_ms === null ? '-' : s.latency_ms.toFixed(1);
    $('frame').textContent = s.frame === null ? '-' : s.frame;
    $('label-set').textContent = s.label_set.join(', ');
    if (!$('labels').value && document.activeElement !== $('labels')) $('labels').value = s.label_set.join(', ');
    const body = $('top').tBodies[0];
    body.replaceChildren(...s.labels.map((label, i) => {
      const row = document.createElement('tr');
      row.innerHTML = '<td></td><td class="score"></td>';
      row.cells[0].textContent = label; row.cells[1].textContent = s.scores[i].toFixed(3);
      return row;
    }));
  } catch (e) { $('state').textContent = 'page lost the stream'; $('state').className = 'bad'; }
}
$('labels-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = new URLSearchParams({labels: $('labels').value});
  const r = await fetch('/labels', {method: 'POST', body, headers: {Accept: 'application/json'}});
  const answer = await r.json();
  $('message').textContent = r.ok ? 'labels changed' : answer.error;
  refresh();
});
setInterval(refresh, 500); refresh();
</script>
</body></html>
"""
