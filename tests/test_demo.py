"""`python -m spectralar.demo` without a browser: the checks of every field, the event framing, the grids against
the command lines the page prints, and the HTTP answers to bad requests (the server keeps serving after each).
The page in a real browser: tests/test_demo_browser.py."""

import http.client
import io
import json
import re
import socket
import struct
import zlib
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import pytest
from demoserver import command_png, parse_events, png_of, serving
from PIL import Image

from spectralar import demo
from spectralar.demo import MAX_UPLOAD, DemoApp, sse_frame

ROOT = Path(__file__).resolve().parent.parent
SANDAL = ROOT / "docs" / "img" / "vary_inputs" / "class5_test8.png"


@pytest.fixture(scope="module")
def app():
    return DemoApp("fmnist", "cpu")


def q(**fields) -> dict:
    """A query as parse_qs gives it."""
    return {k: [str(v)] for k, v in fields.items()}


def run(app, job) -> list[tuple[str, dict]]:
    return list(app.events(job))


def test_sse_frame_is_one_event_per_blank_line():
    """Whatever the payload holds (newlines, quotes, non-ASCII), a frame is `event:`, one `data:` line, a blank
    line: a client splitting on blank lines gets the payload back."""
    payload = {"error": 'line one\nline two: "quoted" \u00e9\n\n', "n": 3}
    frame = sse_frame("error", payload)
    assert frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1
    (name, data), = parse_events(frame.decode() + sse_frame("done", {}).decode())[:1]
    assert name == "error" and json.loads(data) == payload
    assert frame.decode().splitlines()[:2] == ["event: error", "data: " + json.dumps(payload, separators=(",", ":"))]


BAD_SAMPLE = [
    (dict(cfg="abc"), "guidance (CFG) must be a number from 0.0 to 20.0, got 'abc'"),
    (dict(cfg=""), "guidance (CFG) must be a number from 0.0 to 20.0, got ''"),
    (dict(cfg="nan"), "guidance (CFG) must be a number"),
    (dict(cfg="inf"), "guidance (CFG) must be a number"),
    (dict(cfg="20.5"), "from 0.0 to 20.0, got '20.5'"),
    (dict(temperature="-0.1"), "temperature must be a number from 0.0 to 5.0"),
    (dict(seed="-1"), "seed must be a whole number from 0 to 4294967295, got '-1'"),
    (dict(seed="1.5"), "seed must be a whole number"),
    (dict(seed=str(2**32)), "seed must be a whole number"),
    (dict(tokens="0"), "token budget must be a whole number from 1 to 16, got '0'"),
    (dict(tokens="17"), "token budget must be a whole number from 1 to 16, got '17'"),
    (dict(num="0"), "images must be a whole number from 1 to 16"),
    (dict(num="1000000"), "images must be a whole number from 1 to 16"),
    (dict(cls="10"), "class must be an id from 0 to 9, got '10'"),
    (dict(cls="-1"), "class must be an id from 0 to 9, got '-1'"),
    (dict(cls="auto"), "class must be an id from 0 to 9, got 'auto'"),  # only variations ask the classifier
    (dict(cls=None), "choose a class"),
    (dict(keep="2"), "unknown field 'keep'"),
]


@pytest.mark.parametrize("fields, message", BAD_SAMPLE, ids=[str(f) for f, _ in BAD_SAMPLE])
def test_sample_fields_are_checked_before_sampling(app, fields, message, monkeypatch):
    """Each bad field is a ValueError naming it as the page labels it, raised before the sampler is called."""
    monkeypatch.setattr(demo, "stream", lambda *a, **k: pytest.fail("sampled despite a bad field"))
    query = {"cls": "5", **fields}
    with pytest.raises(ValueError) as e:
        app.start_sample(q(**{k: v for k, v in query.items() if v is not None}))
    assert message in str(e.value)


def test_sample_streams_one_preview_per_token_and_ends_with_generates_png(app, tmp_path):
    """tokens=k: k `step` events (index 1..k, a scale-1 preview grid each, no two alike here), then `done`, whose
    image is byte for byte the PNG of the command line it prints."""
    job = app.start_sample(q(cls=5, num=3, tokens=5, seed=7, cfg=1.5, temperature=0.9))
    events = run(app, job)
    assert [e for e, _ in events] == ["step"] * 5 + ["done"]
    steps, done = [d for _, d in events[:-1]], events[-1][1]
    assert [(s["index"], s["total"]) for s in steps] == [(i, 5) for i in range(1, 6)]
    frames = [Image.open(io.BytesIO(png_of(s["image"]))) for s in steps]
    assert {f.size for f in frames} == {(3 * 34 + 2, 36)} == {(s["width"], s["height"]) for s in steps}
    assert len({f.tobytes() for f in frames}) == 5  # every token changes the picture
    assert done["command"] == ("python -m spectralar.generate --classes 5 --num-per-class 3 --tokens 5 --cfg 1.5 "
                               "--temperature 0.9 --seed 7 --out samples.png")
    assert done["filename"] == "Sandal_seed7.png" and done["total"] == 5
    assert png_of(done["image"]) == command_png(done["command"], tmp_path)
    # the last preview is the final grid at scale 1
    big = np.asarray(Image.open(io.BytesIO(png_of(done["image"]))))
    assert np.array_equal(big[::3, ::3], np.asarray(frames[-1]))


def test_variations_end_with_varys_png(app, tmp_path):
    """An upload, k tokens kept: steps k+1..N, then vary's row (input, blank, first k tokens alone, variations)
    byte for byte, for a chosen class and for the classifier's guess."""
    for cls, keep in (("7", 3), ("auto", 2)):
        job = app.start_vary(q(cls=cls, keep=keep, num=2, seed=1, name=SANDAL.name), SANDAL.read_bytes())
        events = run(app, job)
        assert [d["index"] for _, d in events[:-1]] == list(range(keep + 1, 17))
        done = events[-1][1]
        assert (" --class 7 " in done["command"]) == (cls == "7")
        assert png_of(done["image"]) == command_png(done["command"], tmp_path, image=SANDAL)
    assert "sampled as Sandal (the classifier's guess, p=" in done["note"]


def test_keeping_every_token_returns_the_reconstruction(app):
    """keep = N: nothing to sample, no steps; the row holds the reconstruction num times."""
    events = run(app, app.start_vary(q(cls=5, keep=16, num=3), SANDAL.read_bytes()))
    assert [e for e, _ in events] == ["done"]
    grid = np.asarray(Image.open(io.BytesIO(png_of(events[0][1]["image"]))))
    tiles = [grid[6 + c * 102:6 + c * 102 + 96, 6:102] for c in range(2, 6)]  # scale 3: 34 px * 3 per tile
    assert all(np.array_equal(t, tiles[0]) for t in tiles)


def png_header_claiming(w: int, h: int) -> bytes:
    """A valid 1x1 PNG whose header says w x h (a decompression bomb's calling card)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = struct.pack(">II", w, h)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()[:300]


BAD_UPLOADS = [
    (b"", "the upload is empty"),
    (b"just some text\n", "notes.txt: not an image this page can read (UnidentifiedImageError: cannot identify image "
                          "file notes.txt)"),
    (truncated_png(), "notes.txt: unreadable image"),
    (png_header_claiming(5000, 5000), "notes.txt: 5000x5000 pixels is too large"),
    (png_header_claiming(40000, 40000), "notes.txt: the image is too large to open"),
]


@pytest.mark.parametrize("data, message", BAD_UPLOADS, ids=["empty", "text", "truncated", "large", "bomb"])
def test_bad_uploads_are_messages(app, data, message):
    with pytest.raises(ValueError) as e:
        app.start_vary(q(cls=5, keep=2, name="notes.txt"), data)
    assert message in str(e.value)


def test_vary_fields_are_checked(app):
    for fields, message in ((dict(keep="17"), "tokens to keep must be a whole number from 0 to 16"),
                            (dict(tokens="3"), "unknown field 'tokens'")):
        with pytest.raises(ValueError, match=re.escape(message)):
            app.start_vary(q(cls=5, **fields), SANDAL.read_bytes())


# ---- over HTTP -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(app):
    with serving(app) as base:
        yield base


def request(url, method, path, body=None, headers=None):
    """(status, headers, body text) of one request."""
    conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def test_page_loads_only_itself(url):
    """The page and its two files are served with a policy that lets it load nothing from elsewhere, and none of
    them names another site."""
    for path in ("/", "/demo.js", "/demo.css"):
        status, headers, body = request(url, "GET", path)
        assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
        assert not re.search(r"(https?:)?//[a-z0-9]", body.replace("http://127.0.0.1", "")), path
    status, _, body = request(url, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200 and info["classes"][5] == "Sandal" and info["num_tokens"] == 16
    assert info["fields"]["tokens"] == {"min": 1, "max": 16, "default": 16, "label": "token budget"}


def test_stream_framing_over_http(url):
    status, headers, body = request(url, "GET", "/api/sample?" + urlencode(dict(cls=1, num=2, tokens=3)))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = parse_events(body)
    assert [e for e, _ in events] == ["step", "step", "step", "done"]
    assert [json.loads(d).get("index") for _, d in events] == [1, 2, 3, None]


def test_bad_requests_get_messages_and_the_server_keeps_serving(url):
    cases = [
        ("GET", "/api/sample?cls=5&cfg=99", None, {}, 400, "guidance (CFG) must be a number from 0.0 to 20.0"),
        ("POST", "/api/vary?cls=5&keep=2", b"not an image", {}, 400, "upload: not an image this page can read"),
        ("POST", "/api/vary?cls=5", None, {"Content-Length": str(MAX_UPLOAD + 1)}, 413,
         "the page takes images up to 4 MB"),  # refused before a byte of the body is read
        ("POST", "/api/vary?cls=5", None, {"Content-Length": "12x"}, 411, "needs a Content-Length"),
        ("GET", "/etc/passwd", None, {}, 404, "no page at /etc/passwd"),
        ("POST", "/api/sample", b"", {}, 404, "no page at /api/sample"),
    ]
    for method, path, body, headers, status, message in cases:
        got, h, text = request(url, method, path, body, headers)
        assert (got, h["Content-Type"]) == (status, "application/json"), (path, text)
        assert message in json.loads(text)["error"]
    assert request(url, "GET", "/api/info")[0] == 200


def test_a_page_that_leaves_mid_stream_stops_its_run(app, url, monkeypatch):
    """Closing the tab while it samples stops that run (no more tokens are sampled for nobody) and releases the
    model for the next request."""
    counts, real = [], app.events

    def counted(job):
        counts.append(0)
        for event in real(job):
            counts[-1] += 1
            yield event

    monkeypatch.setattr(app, "events", counted)
    with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=60) as s:
        s.sendall(b"GET /api/sample?cls=5&num=16&tokens=16 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"event: step" not in got:
            got += s.recv(65536)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    status, _, body = request(url, "GET", "/api/sample?cls=2&num=1&tokens=2")
    assert status == 200 and [e for e, _ in parse_events(body)] == ["step", "step", "done"]
    assert counts[0] < 16 + 1 and counts[1] == 3, counts


def test_unexpected_errors_are_one_line_on_the_page(app, url, monkeypatch, capsys):
    """A failure that is not bad input: 500 (before the stream) or an `error` event (during it), one line each;
    the traceback goes to the server's log only."""
    def broken(query):
        raise KeyError("boom")

    monkeypatch.setattr(app, "start_sample", broken)
    status, _, text = request(url, "GET", "/api/sample?cls=5")
    assert status == 500 and json.loads(text) == {"error": "internal error (KeyError: 'boom'); the server's log has "
                                                           "the details"}
    monkeypatch.undo()

    real = app.events

    def fails_midway(job):
        events = real(job)
        yield next(events)
        raise RuntimeError("non-finite logits (NaN or inf) at sampling step 1")

    monkeypatch.setattr(app, "events", fails_midway)
    status, _, text = request(url, "GET", "/api/sample?cls=5&num=1&tokens=4")
    events = parse_events(text)
    assert status == 200 and [e for e, _ in events] == ["step", "error"]
    assert json.loads(events[1][1])["error"].startswith("non-finite logits")
    assert "Traceback" in capsys.readouterr().err and "Traceback" not in text


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port 70000: use 0 to 65535"),
    (["--checkpoint", "nope"], "'nope' is neither a bundled model"),
    (["--device", "tpu"], "--device 'tpu': not a device"),
])
def test_bad_flags_fail_in_one_line(argv, message, capsys):
    assert demo.main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_taken_port_is_one_line(url, capsys):
    assert demo.main(["--port", str(urlsplit(url).port)]) == 2
    assert f"cannot listen on 127.0.0.1:{urlsplit(url).port}" in capsys.readouterr().err
