"""`edgeclip stream --serve`: the page's server over HTTP, the port checks, and the page in a real browser.

The browser test runs headless Chromium (Debian's `chromium` package) and drives it over the Chrome DevTools Protocol
with the small websocket client below (standard library only); it is skipped where no Chromium is installed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.errors import InputError
from edgeclip.stream.outputs import MIN_ANNOTATED_WIDTH
from edgeclip.stream.web import WebPage, parse_serve
from tests.stream_world import world_clip

STATE = {"state": "running", "labels": ["red circle"], "scores": [0.9], "label_set": ["red circle", "blue star"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def _page(**kwargs: Any) -> Iterator[tuple[WebPage, list[tuple[str, ...]]]]:
    asked: list[tuple[str, ...]] = []
    web = WebPage("127.0.0.1", 0, on_labels=lambda labels: asked.append(tuple(labels)), **kwargs).start()
    try:
        yield web, asked
    finally:
        web.close()


def _post(url: str, labels: str, accept: str | None = None, origin: str | None = None) -> tuple[int, str]:
    headers = {"Accept": accept} if accept else {}
    if origin:
        headers["Origin"] = origin
    data = urllib.parse.urlencode({"labels": labels}).encode()
    request = urllib.request.Request(url + "labels", data=data, headers=headers, method="POST")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _mjpeg_frames(url: str, count: int) -> list[np.ndarray]:
    """The first `count` JPEG parts of a multipart stream, decoded; each part ends where the next boundary begins."""
    delimiter = b"\r\n--edgeclipframe\r\n"
    frames = []
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=edgeclipframe"
        assert response.readline() == b"--edgeclipframe\r\n"
        buffer = b""
        while len(frames) < count:
            head, _, body = buffer.partition(b"\r\n\r\n")
            if not _ or delimiter not in body:
                buffer += response.read1(65536)
                continue
            assert head == b"Content-Type: image/jpeg", head
            jpeg, buffer = body.split(delimiter, 1)
            frames.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    return frames


# ---------------------------------------------------------------- --serve values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8080", ("127.0.0.1", 8080)),
        (":8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:8081", ("0.0.0.0", 8081)),
        ("jetson.local:80", ("jetson.local", 80)),
        ("[::1]:8080", ("::1", 8080)),
        (" 9000 ", ("127.0.0.1", 9000)),
    ],
)
def test_parse_serve_defaults_to_localhost(value: str, expected: tuple[str, int]) -> None:
    assert parse_serve(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http", "give a port (8080) or HOST:PORT"),
        ("host:", "give a port (8080) or HOST:PORT"),
        ("70000", "give a port (8080) or HOST:PORT"),
        ("-1", "give a port (8080) or HOST:PORT"),
        ("::1:8080", "write an IPv6 host as [::1]:8080"),
        ("[::1]8080", "write an IPv6 host as [::1]:8080"),
    ],
)
def test_parse_serve_refuses_what_is_not_a_port(value: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        parse_serve(value)


# ---------------------------------------------------------------- ports


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is in use by another program"):
            WebPage("127.0.0.1", port, on_labels=print)


def test_a_host_that_is_not_here_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"--serve: cannot listen on 192\.0\.2\.1:"):
        WebPage("192.0.2.1", _free_port(), on_labels=print)  # TEST-NET-1: never an address of this machine


def test_an_unknown_host_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"--serve: cannot listen on no-such-host\.invalid:8080: "):
        WebPage("no-such-host.invalid", 8080, on_labels=print)


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback here")
def test_an_ipv6_host_is_served() -> None:
    web = WebPage(*parse_serve("[::1]:0"), on_labels=print).start()
    try:
        assert web.url == f"http://[::1]:{web.port}/"
        web.publish(None, STATE)
        with urllib.request.urlopen(web.url + "state", timeout=5) as response:
            assert json.load(response)["label_set"] == STATE["label_set"]
    finally:
        web.close()


def test_cli_checks_the_port_before_the_stream_starts(tmp_path: Path) -> None:
    """A busy port fails at once, before the model loads: the missing bundle given here is never reached."""
    from edgeclip.cli import main

    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), np.zeros((32, 32, 3), np.uint8))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        args = ["stream", "--source", str(folder), "--labels", "a,b", "--serve", str(port)]
        result = CliRunner().invoke(main, [*args, "--bundle", str(tmp_path / "no-bundle")])
    assert result.exit_code == 1, result.output
    assert f"error: --serve: port {port} on 127.0.0.1 is in use by another program" in result.output
    assert "Traceback" not in result.output and "no-bundle" not in result.output


def test_a_restarted_server_takes_its_port_back_at_once() -> None:
    """A viewer that was connected leaves the port in TIME_WAIT; the next run on that port must not fail."""
    with _page() as (web, _):
        port = web.port
        web.publish(np.zeros((24, 32, 3), np.uint8), STATE)
        assert len(_mjpeg_frames(web.url + "stream.mjpg", 1)) == 1
    again = WebPage("127.0.0.1", port, on_labels=print)
    again.close()
    assert again.port == port


# ---------------------------------------------------------------- endpoints


def test_frames_go_out_as_mjpeg_to_every_viewer() -> None:
    with _page() as (web, _):
        image = np.zeros((48, 64, 3), np.uint8)
        image[:, :32] = (0, 0, 255)  # left half red (BGR), right half black
        stop = threading.Event()

        def publish() -> None:
            while not stop.is_set():
                web.publish(image, STATE)
                time.sleep(0.02)

        feeder = threading.Thread(target=publish, daemon=True)
        feeder.start()
        try:
            streams = [_mjpeg_frames(web.url + "stream.mjpg", 3) for _ in range(2)]
        finally:
            stop.set()
            feeder.join()
        for frames in streams:
            for frame in frames:
                assert frame.shape == image.shape
                assert np.abs(frame.astype(int) - image).mean() < 4  # JPEG of the same picture
        assert web.frames_sent >= 6


def test_state_and_page_show_what_was_published() -> None:
    with _page(title="edgeclip: cam <0>") as (web, _):
        web.publish(None, {**STATE, "label_set": ['a "quoted" <label>', "b"]})
        with urllib.request.urlopen(web.url + "state", timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert json.load(response)["label_set"] == ['a "quoted" <label>', "b"]
        with urllib.request.urlopen(web.url, timeout=5) as response:
            page = response.read().decode()
        assert "<title>edgeclip: cam &lt;0&gt;</title>" in page
        assert 'value="a &quot;quoted&quot; &lt;label&gt;, b"' in page
        assert '<img id="frames" src="/stream.mjpg"' in page and '<form id="labels-form"' in page


def test_the_label_form_changes_the_labels() -> None:
    with _page() as (web, asked):
        assert _post(web.url, "a cat, a dog ", accept="application/json") == (200, '{"labels": ["a cat", "a dog"]}')
        status, _ = _post(web.url, "a bird")  # a plain form post (no script): back to the page
        assert status == 303
        assert asked == [("a cat", "a dog"), ("a bird",)]


def test_label_changes_from_another_site_are_refused() -> None:
    with _page() as (web, asked):
        assert _post(web.url, "a cat", origin="http://evil.example") == (
            403,
            "error: label changes from another site's page are refused\n",
        )
        assert _post(web.url, "a dog", origin=web.url.rstrip("/"))[0] == 303  # the page's own origin
        assert asked == [("a dog",)]


@pytest.mark.parametrize("labels", ["", "a,,b", "a, a"])
def test_bad_labels_from_the_form_are_refused_with_the_reason(labels: str) -> None:
    with _page() as (web, asked):
        status, body = _post(web.url, labels, accept="application/json")
        assert status == 400
        assert json.loads(body)["error"]
        status, text = _post(web.url, labels)
        assert status == 400 and text.startswith("error: ")
        assert asked == []


def test_unknown_paths_say_what_exists() -> None:
    with _page() as (web, _):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(web.url + "favicon.ico", timeout=5)
        assert info.value.code == 404 and b"/stream.mjpg" in info.value.read()


# ---------------------------------------------------------------- the page in a real browser


def _chromium() -> str | None:
    for name in (os.environ.get("EDGECLIP_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,720",
)


class DevTools:
    """A minimal client of the Chrome DevTools Protocol over one websocket (RFC 6455, text frames only)."""

    def __init__(self, ws_url: str, timeout: float = 30.0) -> None:
        url = urllib.parse.urlsplit(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = self.sock.recv(4096)
            assert chunk, "DevTools closed the connection during the websocket handshake"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 101"), answer[:200]
        self._buffer = answer.split(b"\r\n\r\n", 1)[1]
        self._id = 0

    def close(self) -> None:
        self.sock.close()

    def _recv(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "DevTools closed the websocket"
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send(self, text: str) -> None:
        payload = text.encode()
        head = bytes([0x81])  # FIN, text
        if len(payload) < 126:
            head += bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        mask = os.urandom(4)  # a client must mask what it sends
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _message(self) -> dict[str, Any]:
        data = b""
        while True:
            first, second = self._recv(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._recv(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._recv(8))
            data += self._recv(length)
            if first & 0x80:  # FIN: the last fragment
                return dict(json.loads(data))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = self._message()
            if message.get("id") == self._id:  # skip events
                assert "error" not in message, f"{method}: {message['error']}"
                return dict(message["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")


@contextlib.contextmanager
def _browser(url: str, profile: Path) -> Iterator[DevTools]:
    chromium = _chromium()
    assert chromium is not None
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        active = profile / "DevToolsActivePort"  # Chromium writes its debugging port here once it listens
        _wait(lambda: (active.is_file() and active.read_text().count("\n") >= 1) or process.poll() is not None, 30, "")
        assert process.poll() is None, f"Chromium exited: {process.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
        port = int(active.read_text().split()[0])

        def page_target() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                targets = json.load(response)
            return next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"), None)

        tools = DevTools(_wait(page_target, 30, "Chromium's page target"))
        try:
            navigated = tools.call("Page.navigate", url=url)
            assert "errorText" not in navigated, f"Chromium could not open {url}: {navigated['errorText']}"
            _wait(
                lambda: (
                    tools.evaluate("location.href") == url and tools.evaluate("!!document.getElementById('frames')")
                ),
                30,
                f"{url} in Chromium",
            )
            yield tools
        finally:
            tools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Err:
    """Collects what run_stream writes on stderr, from its thread."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return len(text)

    def flush(self) -> None:
        pass

    def url(self) -> str | None:
        return next((line.split(" on ", 1)[1] for line in self.lines if line.startswith("serving the stream")), None)


# What the test reads in the page, as JavaScript expressions.
JS_SIZE = "[document.getElementById('frames').naturalWidth, document.getElementById('frames').naturalHeight]"
JS_PIXELS = """(() => {
  const f = document.getElementById('frames'), c = document.createElement('canvas');
  c.width = f.naturalWidth; c.height = f.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(f, 0, 0);
  return Array.from(g.getImageData(0, 0, c.width, c.height).data).reduce((a, b) => (a * 31 + b) % 1000000007, 7);
})()"""
JS_ROWS = "Array.from(document.querySelectorAll('#top tr')).map(r => [r.cells[0].textContent, +r.cells[1].textContent])"


def _text(page: DevTools, element: str) -> str:
    return str(page.evaluate(f"document.getElementById({element!r}).textContent"))


def _submit_labels(page: DevTools, text: str) -> None:
    page.evaluate(
        f"document.getElementById('labels').value = {json.dumps(text)}; document.querySelector('button').click()"
    )


class _Camera:
    """A live MJPEG source: a page of edgeclip's on a fixed port, fed the world's frames at 20 FPS."""

    def __init__(self, frames: list[np.ndarray], port: int = 0) -> None:
        self.frames = frames
        self.page = WebPage("127.0.0.1", port, on_labels=print).start()
        self.url = self.page.url + "stream.mjpg"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.page.publish(self.frames[i % len(self.frames)], STATE)
            i += 1
            time.sleep(0.05)

    def unplug(self) -> None:
        self._stop.set()
        self._thread.join()
        self.page.close()


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_the_page_in_a_browser_shows_frames_and_changes_labels(tmp_path: Path) -> None:
    """`edgeclip stream --serve` for real: the built-in model on a live MJPEG camera, the page opened in headless
    Chromium. Frames arrive in the page; the labels, scores and state show; the page's form changes the stream's
    labels; a camera that goes away and comes back shows as reconnecting, then running."""
    from edgeclip.stream.app import StreamOptions, run_stream

    clip = world_clip(2)
    first = tuple(clip.labels[:8])
    second = ("red circle", "red hexagon", "blue star")  # the clip shows a red circle, then a red hexagon
    camera = _Camera(clip.frames)
    err = _Err()
    streams: list[Any] = []
    failures: list[BaseException] = []

    def serve() -> None:
        opts = StreamOptions(
            source=camera.url, labels=first, serve="127.0.0.1:0", top_k=3, stall_timeout=1.0, max_reconnects=20
        )
        try:
            with open(os.devnull, "w") as out:
                run_stream(opts, out=out, err=err, on_ready=streams.append)
        except BaseException as exc:
            failures.append(exc)

    runner = threading.Thread(target=serve, daemon=True)
    runner.start()
    try:
        url = _wait(lambda: err.url() or failures, 60, "the page's URL on stderr")
        assert not failures, failures
        with _browser(url, tmp_path / "chromium-profile") as page:
            # frames arrive: the <img> has the stream's size, and its pixels change (noise, frame numbers)
            size = _wait(lambda: (v := page.evaluate(JS_SIZE))[0] and v, 30, "a frame in the page")
            height, width = clip.frames[0].shape[:2]
            factor = max(1.0, MIN_ANNOTATED_WIDTH / width)  # annotated frames: small ones enlarged for their text
            assert size == [round(width * factor), round(height * factor)]
            seen = {page.evaluate(JS_PIXELS)}
            _wait(lambda: seen.add(page.evaluate(JS_PIXELS)) or len(seen) >= 3, 30, "new frames in the page")
            # the labels and scores of the current frame, the state, the label set in the form
            shown = _wait(lambda: page.evaluate(JS_ROWS), 30, "the labels table")
            assert len(shown) == 3 and all(label in first for label, _ in shown)
            assert all(0.0 <= score <= 1.0 for _, score in shown) and shown[0][1] >= shown[-1][1]
            assert _text(page, "state") == "running"
            assert _wait(lambda: _text(page, "frame").isdigit() and int(_text(page, "frame")) > 0, 10, "a frame index")
            assert page.evaluate("document.getElementById('labels').value") == ", ".join(first)
            shot = page.call("Page.captureScreenshot", format="png")
            (tmp_path / "page.png").write_bytes(base64.b64decode(shot["data"]))

            # the form: a bad value is refused with the reason, and the labels stay
            _submit_labels(page, "a,,b")
            message = _wait(lambda: _text(page, "message"), 10, "a message")
            assert message.startswith("blank or non-text labels at positions 2"), message
            assert streams[0].labels == first
            # a good value changes the stream's labels, and the page shows results of the new ones
            _submit_labels(page, ", ".join(second))
            _wait(lambda: _text(page, "message") == "labels changed", 10, "the labels to change")
            assert streams[0].labels == second
            _wait(lambda: _text(page, "label-set") == ", ".join(second), 10, "the new label set")
            shown = _wait(lambda: (r := page.evaluate(JS_ROWS)) and {x for x, _ in r} <= set(second) and r, 30, "")
            assert {label for label, _ in shown} == set(second)

            # the camera goes away: the page says so; it comes back on its port: running again, frames again
            port = camera.page.port
            camera.unplug()
            state = _wait(lambda: (s := _text(page, "state")) in ("reconnecting", "stalled") and s, 15, "a fault")
            assert page.evaluate("document.getElementById('state').className") == "bad", state
            assert _text(page, "fps") == "0.0"  # no frames are coming: the last rate is not shown as current
            page.call("Page.reload")  # a viewer arriving now sees the last frame, not a broken image
            again = "(document.getElementById('state') || {}).textContent"  # null while the page reloads
            _wait(lambda: page.evaluate(again) in ("reconnecting", "stalled"), 15, "the page again")
            assert _wait(lambda: page.evaluate(JS_SIZE)[0], 10, "the last frame") == size[0]
            camera = _Camera(clip.frames, port)
            _wait(lambda: _text(page, "state") in ("running", "recovered"), 30, "the stream to recover")
            before = page.evaluate(JS_PIXELS)
            _wait(lambda: page.evaluate(JS_PIXELS) != before, 30, "frames after the reconnection")
        with urllib.request.urlopen(url + "state", timeout=5) as response:
            state = json.load(response)
        assert state["label_set"] == list(second) and state["stats"]["reconnects"] >= 1
    finally:
        if streams:
            streams[0].stop()
        runner.join(timeout=30)
        camera.unplug()
    assert not runner.is_alive() and not failures, failures
    assert any(line.startswith("edgeclip stream ") and "reconnects" in line for line in err.lines), err.lines
