"""Image files as users hand them over: 16-bit PNG / TIFF / PGM, floating-point TIFF, transparency, files too large
to decode. Each is read as the 8-bit image it shows (the same pixels as its 8-bit twin) or refused with a message
naming the file, both by `load_image` (training's image folders) and by `python -m spectralar.reconstruct`."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from spectralar.data import BACKGROUND, DataError, ImageFolder, load_image, pixels
from spectralar.reconstruct import main as reconstruct_main


def garment(size=28, seed=0) -> np.ndarray:
    """A Fashion-MNIST-like uint8 picture: dark background, a bright textured shape."""
    rng = np.random.default_rng(seed)
    a = (rng.random((size, size)) * 30).astype(np.uint8)
    a[5:23, 8:20] = 120 + (rng.random((18, 12)) * 135).astype(np.uint8)
    return a


def save(arr, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


@pytest.mark.parametrize("ext", ["png", "tif", "pgm"])
@pytest.mark.parametrize("size, channels", [(28, 1), (32, 1), (17, 3)])
def test_sixteen_bit_reads_as_its_eight_bit_twin(ext, size, channels, tmp_path):
    """v * 257 stored in 16 bits is v in 8 (Pillow's own conversion clipped every value above 255 to white)."""
    a = garment()
    eight = save(a, tmp_path / "a8.png")
    sixteen = save(a.astype(np.uint16) * 257, tmp_path / f"a16.{ext}")
    assert Image.open(sixteen).mode.startswith("I")
    assert torch.equal(load_image(sixteen, size, channels), load_image(eight, size, channels))


def test_sixteen_bit_rounds_to_nearest(tmp_path):
    v = np.array([[0, 128, 129, 385, 65535, 65406]], np.uint16)  # 128 / 257 = 0.498 -> 0, 129 / 257 = 0.502 -> 1
    with Image.open(save(v, tmp_path / "v.png")) as im:
        assert pixels(im, 1).tolist() == [[0, 0, 1, 1, 255, 254]]  # 65406 / 257 = 254.498


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    a = garment()
    f = save(a.astype(np.float32) / 255, tmp_path / "f.tif")
    assert Image.open(f).mode == "F"
    assert torch.equal(load_image(f, 28, 1), load_image(save(a, tmp_path / "a.png"), 28, 1))


@pytest.mark.parametrize("values, needle", [(lambda a: a.astype(np.float32), "values in [0, 2"),
                                            (lambda a: a.astype(np.float32) / 127.5 - 1, "values in [-1, "),
                                            (lambda a: np.where(a > 200, np.nan, a / 255).astype(np.float32),
                                             "non-finite")])
def test_float_tiff_outside_unit_range_is_refused(values, needle, tmp_path):
    f = save(values(garment()), tmp_path / "f.tif")
    with pytest.raises(DataError, match="only \\[0, 1\\]") as e:
        load_image(f, 28, 1)
    assert str(f) in str(e.value) and needle in str(e.value)


def test_thirty_two_bit_integer_tiff_is_refused(tmp_path):
    f = save(garment().astype(np.int32), tmp_path / "i.tif")
    with pytest.raises(DataError, match="32-bit integer"):
        load_image(f, 28, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_transparency_is_composited_on_black(channels, tmp_path):
    """An RGBA garment on a transparent white background (how image editors save cut-outs) is the garment on
    black, not a white square."""
    a = garment()
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # what lies under the transparent area
    rgba[5:23, 8:20, :3] = a[5:23, 8:20, None]
    rgba[5:23, 8:20, 3] = 255
    rgba[5:23, 8, 3] = 128  # a half-transparent edge
    on_black = np.full((28, 28), BACKGROUND, np.uint8)
    on_black[5:23, 8:20] = a[5:23, 8:20]
    on_black[5:23, 8] = np.rint(a[5:23, 8] * (128 / 255) + BACKGROUND * (127 / 255)).astype(np.uint8)
    got = load_image(save(rgba, tmp_path / "cut.png"), 28, channels)
    assert torch.equal(got, torch.from_numpy(on_black)[None].expand(channels, -1, -1))
    la = save(np.stack([on_black * 0 + 255, rgba[..., 3]], -1), tmp_path / "la.png")  # grey + alpha
    assert load_image(la, 28, 1)[0, 0, 0] == BACKGROUND and load_image(la, 28, 1)[0, 10, 10] == 255


def test_palette_transparency_is_composited(tmp_path):
    p = Image.fromarray(garment()).convert("P")
    p.save(tmp_path / "p.png", transparency=int(np.asarray(p)[0, 0]))
    got = load_image(tmp_path / "p.png", 28, 1)
    assert got[0, 0, 0] == BACKGROUND and got[0, 10, 10] > 100


def huge_png(path, side=20000) -> str:
    """A PNG whose header says side x side pixels (what a 20000x20000 scan opens as), with a token pixel body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return str(path)


def test_decompression_bomb_is_a_data_error_naming_the_file(tmp_path):
    f = huge_png(tmp_path / "scan.png")
    with pytest.raises(DataError, match="too large to decode safely") as e:
        load_image(f, 32, 1)
    assert f in str(e.value) and "MAX_IMAGE_PIXELS" in str(e.value)


def test_skip_bad_images_skips_a_bomb_and_converts_the_rest(tmp_path):
    root = tmp_path / "folder"
    for c in ("coat", "shirt"):
        (root / c).mkdir(parents=True)
        save(garment(seed=ord(c[0])), root / c / "a.png")
        save(garment(seed=ord(c[0])).astype(np.uint16) * 257, root / c / "b16.png")
    huge_png(root / "coat" / "huge.png")
    with pytest.raises(DataError, match="huge.png"):
        ImageFolder(root, 32, 1)[2]  # coat/a.png, coat/b16.png, coat/huge.png, ...
    ds = ImageFolder(root, 32, 1, skip_bad=True)
    assert len(ds) == 4 and ds.skipped == [str(root / "coat" / "huge.png")]
    assert torch.equal(ds[0][0], ds[1][0])  # the 16-bit twin trains on the same pixels


def _psnr_line(out):
    return next(line for line in out.splitlines() if "PSNR" in line).rsplit(":", 1)[1]


def test_reconstruct_sixteen_bit_png_as_its_eight_bit_twin(tmp_path, capsys):
    """The user's case: a 28x28 Fashion-MNIST image saved as a 16-bit PNG reconstructs exactly as the 8-bit one
    (it used to come out white: 14.6 instead of 25.0 dB)."""
    a = garment()
    eight, sixteen = save(a, tmp_path / "a8.png"), save(a.astype(np.uint16) * 257, tmp_path / "a16.png")
    psnr = {}
    for f in (eight, sixteen):
        assert reconstruct_main([str(f), "--out", str(tmp_path / f"r_{f.stem}.png"), "--device", "cpu"]) == 0
        psnr[f.stem] = _psnr_line(capsys.readouterr().out)
    assert psnr["a16"] == psnr["a8"]
    assert (tmp_path / "r_a16.png").read_bytes() == (tmp_path / "r_a8.png").read_bytes()


@pytest.mark.parametrize("bad, needle", [("bomb", "too large to decode safely"), ("float", "only [0, 1]"),
                                         ("text", "unreadable image")])
def test_reconstruct_refuses_in_one_line(bad, needle, tmp_path, capsys):
    f = tmp_path / f"{bad}.png"
    if bad == "bomb":
        huge_png(f)
    elif bad == "float":
        f = save(garment().astype(np.float32), tmp_path / "float.tif")
    else:
        f.write_text("not an image")
    assert reconstruct_main([str(f), "--out", str(tmp_path / "r.png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(f) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r.png").exists()
