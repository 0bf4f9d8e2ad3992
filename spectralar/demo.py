"""A local page to try the model: `python -m spectralar.demo`, then open the address it prints.

Pick a class, guidance, temperature, seed, a token budget and the number of images, and watch the samples sharpen
token by token (one decoded preview per token, pushed as server-sent events); upload an image to get variations
that keep its first k tokens; download the grid as a PNG. The page needs nothing beyond the core install: the
standard library's ThreadingHTTPServer serves three static files and a small JSON/event-stream API, and nothing
is fetched from the network. It binds to 127.0.0.1 unless --host says otherwise.

The sampling calls are the library's: a grid from the page is byte for byte the PNG that the command line it shows
writes (`python -m spectralar.generate --classes C --num-per-class n ...`, or `python -m spectralar.vary IMAGE
--keep k ...` for variations), on the same device and thread count.

API (bad input is answered with HTTP 400, 411 or 413 and {"error": message}; the server keeps serving):
  GET  /api/info                          classes, number of tokens, limits and defaults of every field
  GET  /api/sample?cls=&cfg=&temperature=&seed=&tokens=&num=
  POST /api/vary?cls=&keep=&cfg=&temperature=&seed=&num=&name=   body: the image file's bytes
The last two answer text/event-stream: one `step` event per sampled token ({index, total, image: a PNG data URL
of the grid so far at scale 1}), then `done` ({image: the grid as the command line writes it, filename, command,
note}) or `error` ({error}).
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
import math
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch

from .checkpoint import CheckpointError
from .cli import Parser, fail, pick_device, set_threads, threads_flag
from .data import FMNIST_CLASSES, DataError, prepare_image, to_model_range
from .evaluation.measures import check_classifier
from .models.classifier import classify
from .pretrained import checked_config, class_names, load_model, load_pretrained, resolve
from .sampling import SamplingParams, batch_seed, decode_prefix, stream
from .viz import grid_image

__all__ = ["DemoApp", "LIMITS", "build_parser", "main", "make_server", "sse_frame"]

PROG = "python -m spectralar.demo"
PAGE_DIR = Path(__file__).parent / "demo_page"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
          "/demo.css": ("demo.css", "text/css; charset=utf-8")}
# The page loads only itself; data: images are the previews and the download.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'"
DOWNLOAD_SCALE = 3  # generate's and vary's --scale default, so the download equals their PNG
# (low, high, default, page label) of each numeric field; None: the model's number of tokens.
LIMITS = {"cfg": (0.0, 20.0, 2.0, "guidance (CFG)"), "temperature": (0.0, 5.0, 1.0, "temperature"),
          "seed": (0, 2**32 - 1, 0, "seed"), "num": (1, 16, 8, "images"), "tokens": (1, None, None, "token budget"),
          "keep": (0, None, 2, "tokens to keep")}
MAX_UPLOAD = 4 * 2**20  # bytes
MAX_UPLOAD_PIXELS = 4096 * 4096


def sse_frame(event: str, data: dict) -> bytes:
    """One server-sent event: `event: NAME`, one `data:` line of JSON, a blank line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _png(images: torch.Tensor, nrow: int, scale: int) -> tuple[bytes, int, int]:
    """(PNG bytes, width, height) of images [B, C, H, W] in [-1, 1] laid out as `viz.save_grid` lays them out."""
    im = grid_image(images.cpu(), nrow, scale)
    buf = io.BytesIO()
    im.save(buf, format="PNG")  # what save_grid's im.save(path) writes for a .png path
    return buf.getvalue(), im.width, im.height


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@dataclass(frozen=True)
class _Job:
    """One checked request: the steps of its stream, how to lay a preview out, and what `done` says."""

    steps: Iterator  # the sampler's stream of StreamStep, its arguments already checked
    row: Callable[[torch.Tensor], torch.Tensor]  # images [B, C, S, S] decoded so far -> the grid's, in order
    nrow: int
    total: int
    final: torch.Tensor | None  # the grid's images when there is nothing to sample (keep = N)
    filename: str
    command: str
    note: str


class DemoApp:
    """The model behind the page: loads the checkpoint once and turns checked query fields into event streams.
    One sampling request runs at a time (`lock`); the handler holds it while it streams."""

    def __init__(self, checkpoint="fmnist", device="cpu"):
        self.root = resolve(checkpoint)
        self.checkpoint = str(checkpoint)
        tcfg, tmeta = checked_config(self.root / "tokenizer", "tokenizer")
        self.tokenizer, self.generator = load_pretrained(self.root, device)
        self.device = torch.device(device)
        self.num_tokens, self.image_size, self.channels = tcfg.num_tokens, tcfg.image_size, tcfg.channels
        nc = self.generator.config.num_classes
        self.classes = class_names(self.root) or [str(i) for i in range(nc)]
        self.fmnist = tcfg.channels == 1 and tmeta.get("train", {}).get("classes") == FMNIST_CLASSES
        self.guidance = self.generator.config.class_dropout > 0  # CFG needs a null class
        self.classifier = None
        if (self.root / "classifier").is_dir():
            self.classifier = load_model(self.root / "classifier", "classifier", device)
            check_classifier(self.classifier, tcfg.image_size, tcfg.channels, nc)
        self.lock = threading.Lock()

    # ---- what the page is told -------------------------------------------------------------------------------

    def limits(self) -> dict:
        """LIMITS with this model's numbers filled in: {field: (low, high, default, label)}."""
        out = {k: (lo, self.num_tokens if hi is None else hi, self.num_tokens if d is None else d, label)
               for k, (lo, hi, d, label) in LIMITS.items()}
        if not self.guidance:  # a model without a null class samples without guidance only
            out["cfg"] = (1.0, 1.0, 1.0, out["cfg"][3])
        return out

    def info(self) -> dict:
        return {"classes": self.classes, "num_tokens": self.num_tokens, "image_size": self.image_size,
                "classifier": self.classifier is not None, "max_upload_bytes": MAX_UPLOAD,
                "fields": {k: {"min": lo, "max": hi, "default": d, "label": label}
                           for k, (lo, hi, d, label) in self.limits().items()}}

    # ---- checking the fields ---------------------------------------------------------------------------------

    def _fields(self, query: dict, allowed: set[str]) -> dict:
        """The numeric fields in `allowed` from a parse_qs dict (default where absent), checked against `limits`;
        ValueError naming the field as the page labels it. `cls` is left as text."""
        unknown = sorted(set(query) - allowed - {"cls", "name"})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}; this request takes {', '.join(sorted(allowed))} and cls")
        out = {}
        for name in sorted(allowed):
            lo, hi, default, label = self.limits()[name]
            text = query.get(name, [None])[-1]
            if text is None:
                out[name] = default
                continue
            integer = isinstance(lo, int)
            try:
                v = int(text) if integer else float(text)
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and lo <= v <= hi):
                what = "a whole number" if integer else "a number"
                raise ValueError(f"{label} must be {what} from {lo} to {hi}, got {text!r}" if lo != hi else
                                 f"{label} must be {lo} for this model (it was trained without a null class), "
                                 f"got {text!r}")
            out[name] = v
        out["params"] = SamplingParams(cfg_scale=out.pop("cfg"), temperature=out.pop("temperature"))
        return out

    def _class(self, text: str | None, auto: bool = False) -> int | None:
        """Class id from the `cls` field (an id; "auto": None, the classifier decides), or ValueError."""
        if text is None:
            raise ValueError("choose a class")
        if auto and text == "auto":
            if self.classifier is None:
                raise ValueError("this checkpoint has no classifier to tell the image's class: choose a class")
            return None
        if not re.fullmatch(r"\d{1,6}", text) or int(text) >= len(self.classes):
            raise ValueError(f"class must be an id from 0 to {len(self.classes) - 1}, got {text!r}")
        return int(text)

    def _flags(self, f: dict) -> str:
        """The command-line flags shared by generate and vary for the checked fields `f`."""
        p = f["params"]
        flags = f"--cfg {p.cfg_scale!r} --temperature {p.temperature!r} --seed {f['seed']}"
        if self.checkpoint != "fmnist":
            flags += f" --checkpoint {self.checkpoint}"
        return flags + (f" --device {self.device}" if self.device.type != "cpu" else "")

    # ---- the two requests ------------------------------------------------------------------------------------

    def start_sample(self, query: dict) -> _Job:
        """Check a /api/sample query and start its stream: `num` images of one class, sampled as
        `python -m spectralar.generate --classes C --num-per-class num` samples them (one batch, seeded with
        batch_seed(seed, 0))."""
        f = self._fields(query, {"cfg", "temperature", "seed", "tokens", "num"})
        c = self._class(query.get("cls", [None])[-1])
        labels = torch.full((f["num"],), c, dtype=torch.long, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(batch_seed(f["seed"], 0))
        steps = stream(self.generator, labels, f["params"], tokenizer=self.tokenizer, num_tokens=f["tokens"],
                       generator=g)
        name = re.sub(r"[^A-Za-z0-9]+", "_", self.classes[c]).strip("_") or str(c)
        cmd = (f"python -m spectralar.generate --classes {c} --num-per-class {f['num']} --tokens {f['tokens']} "
               f"{self._flags(f)} --out samples.png")
        return _Job(steps, lambda x: x, f["num"], f["tokens"], None, f"{name}_seed{f['seed']}.png", cmd,
                    f"{f['num']} x {self.classes[c]}")

    def start_vary(self, query: dict, data: bytes) -> _Job:
        """Check a /api/vary query and its upload, encode the image and start the stream of `num` variations
        that keep its first `keep` tokens; the grid row is `python -m spectralar.vary IMAGE --keep k`'s."""
        f = self._fields(query, {"cfg", "temperature", "seed", "keep", "num"})
        c = self._class(query.get("cls", [None])[-1], auto=True)
        name = query.get("name", ["upload"])[-1] or "upload"
        x = to_model_range(self._read_image(data, name))[None].to(self.device)  # [1, C, S, S]
        if c is None:
            probs = classify(self.classifier, x)[1].softmax(-1)
            p, c = (float(v) for v in probs.max(-1))
            c, how = int(c), f"{self.classes[int(c)]} (the classifier's guess, p={p:.2f})"
        else:
            how = self.classes[c]
        k, num = f["keep"], f["num"]
        with torch.no_grad():
            codes = self.tokenizer.encode(x)
        labels = torch.full((num,), c, dtype=torch.long, device=self.device)
        # sample_variations' call, streamed: batch_seed(seed, 0) is the seed vary gives its first --keep value
        g = torch.Generator(device=self.device).manual_seed(batch_seed(f["seed"], 0))
        prefix = codes[:, :k].repeat_interleave(num, 0)
        steps = stream(self.generator, labels, f["params"], tokenizer=self.tokenizer, prefix=prefix, generator=g)
        blank = torch.ones_like(x)  # vary's row: input, blank, the first k tokens alone, the variations
        kept = decode_prefix(self.tokenizer, codes[:, :k]) if k else blank
        head = torch.cat([x, blank, kept])
        final = decode_prefix(self.tokenizer, prefix) if k == self.num_tokens else None
        cls_flag = "" if query.get("cls", [""])[-1] == "auto" else f" --class {c}"
        cmd = (f"python -m spectralar.vary {_quote(name)} --keep {k} --num {num}{cls_flag} {self._flags(f)} "
               "--out variations.png")
        stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(name).stem).strip("_") or "upload"
        note = f"kept {k} of {self.num_tokens} tokens; sampled as {how}"
        return _Job(steps, lambda imgs: torch.cat([head, imgs]), 3 + num, self.num_tokens, final,
                    f"{stem}_keep{k}_seed{f['seed']}.png", cmd, note)

    def _read_image(self, data: bytes, name: str) -> torch.Tensor:
        """uint8 [C, S, S] from uploaded bytes, prepared as `vary` prepares a file, or ValueError."""
        from PIL import Image

        if not data:
            raise ValueError("the upload is empty: choose an image file")
        buf = io.BytesIO(data)
        try:
            with Image.open(buf) as im:
                w, h = im.size
        except Image.DecompressionBombError:
            raise ValueError(f"{name}: the image is too large to open") from None
        except Exception as e:  # Pillow raises several types for data that is not an image
            why = f"{type(e).__name__}: {e}".replace(str(buf), name)
            raise ValueError(f"{name}: not an image this page can read ({why})") from None
        if w * h > MAX_UPLOAD_PIXELS:
            raise ValueError(f"{name}: {w}x{h} pixels is too large; the page takes images up to "
                             f"{MAX_UPLOAD_PIXELS / 1e6:.1f} megapixels")
        buf.seek(0)
        try:
            return prepare_image(buf, self.image_size, self.channels, self.fmnist)[0]
        except DataError as e:  # decodes its header but not its pixels (a truncated file)
            raise ValueError(str(e).replace(str(buf), name)) from None

    def events(self, job: _Job):
        """(event, data) pairs of a started job: a `step` per sampled token, then `done`."""
        last = None
        for step in job.steps:
            last = step
            png, w, h = _png(job.row(step.images), job.nrow, 1)
            yield "step", {"index": step.index, "total": step.total, "image": _data_url(png), "width": w,
                           "height": h}
        images = job.row(job.final if last is None else last.images)
        png, w, h = _png(images, job.nrow, DOWNLOAD_SCALE)
        yield "done", {"image": _data_url(png), "width": w, "height": h, "filename": job.filename,
                       "command": job.command, "note": job.note, "total": job.total}


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[\w.,+-]+", name) else "'" + name.replace("'", "'\\''") + "'"


class _Handler(BaseHTTPRequestHandler):
    """Routes: the static page, /api/info, /api/sample (GET), /api/vary (POST). No traceback ever reaches the page:
    bad input is a 400 with a message, anything else a 500 whose details go to the server's log."""

    server_version = "spectralar-demo"
    timeout = 60  # seconds a client may stall while sending its request (an upload)

    @property
    def app(self) -> DemoApp:
        return self.server.app

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path in STATIC:
            body, ctype = self.server.static[url.path]
            self._send(200, body, ctype)
        elif url.path == "/api/info":
            self._json(200, self.app.info())
        elif url.path == "/api/sample":
            self._stream(lambda: self.app.start_sample(parse_qs(url.query, keep_blank_values=True)))
        elif url.path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._json(404, {"error": f"no page at {url.path}"})

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path != "/api/vary":
            return self._json(404, {"error": f"no page at {url.path}"})
        size = self.headers.get("Content-Length")
        if size is None or not size.isdigit():
            return self._json(411, {"error": "the upload needs a Content-Length header"})
        if int(size) > MAX_UPLOAD:  # refused unread: the connection closes after the answer
            self.close_connection = True
            return self._json(413, {"error": f"the upload is {int(size) / 2**20:.1f} MB; the page takes images up to "
                                             f"{MAX_UPLOAD / 2**20:.0f} MB"})
        data = self.rfile.read(int(size))
        if len(data) != int(size):
            return self._json(400, {"error": f"the upload ended after {len(data)} of {size} bytes"})
        self._stream(lambda: self.app.start_vary(parse_qs(url.query, keep_blank_values=True), data))

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _internal_error(self, e: Exception) -> str:
        """Log the traceback on the server; the page gets one line."""
        print(f"{PROG}: error in {self.command} {self.path}:", file=sys.stderr)
        traceback.print_exc()
        return f"internal error ({type(e).__name__}: {e}); the server's log has the details"

    def _stream(self, start) -> None:
        """Check and start a job under the app's lock, then push its events as text/event-stream."""
        with self.app.lock:
            try:
                job = start()
            except (ValueError, CheckpointError) as e:  # bad input: the message is for the person at the page
                return self._json(400, {"error": str(e)})
            except Exception as e:
                return self._json(500, {"error": self._internal_error(e)})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self._common_headers()
            self.end_headers()
            self.close_connection = True  # the stream ends when the connection does (no Content-Length)
            events = self.app.events(job)
            try:
                for event, data in events:
                    self.wfile.write(sse_frame(event, data))
            except (BrokenPipeError, ConnectionResetError):  # the page went away: stop sampling
                events.close()
            except Exception as e:
                msg = str(e) if isinstance(e, RuntimeError) and "non-finite" in str(e) else self._internal_error(e)
                try:
                    self.wfile.write(sse_frame("error", {"error": msg}))
                except OSError:
                    pass


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 0, quiet: bool = False) -> ThreadingHTTPServer:
    """The HTTP server of `app` on host:port (port 0: a free one; `server.server_address` says which), not yet
    serving: call `serve_forever()` (in a thread, for tests) and `shutdown()`."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.app, server.quiet = app, quiet
    server.static = {route: ((PAGE_DIR / name).read_bytes(), ctype) for route, (name, ctype) in STATIC.items()}
    return server


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the page has no login)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    p.add_argument("--checkpoint", default="fmnist",
                   help="bundled model name (fmnist) or a directory with tokenizer/ and generator/ (from train)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    threads_flag(p)
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        return fail(PROG, f"--port {args.port}: use 0 to 65535")
    try:
        device = pick_device(args.device)
        set_threads(PROG, args.threads)
        app = DemoApp(args.checkpoint, device)
        server = make_server(app, args.host, args.port, args.quiet)
    except (CheckpointError, ValueError) as e:
        return fail(PROG, e)
    except OSError as e:  # the address is taken or not ours
        return fail(PROG, f"cannot listen on {args.host}:{args.port} ({e.strerror or e})")
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"{PROG}: serving {args.checkpoint} ({app.num_tokens} tokens, {len(app.classes)} classes, {device}) at "
          f"http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        if not ipaddress.ip_address(host).is_loopback:
            print(f"{PROG}: warning: listening on {host}: anyone who can reach it can use the page", flush=True)
    except ValueError:
        pass
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
