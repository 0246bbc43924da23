"""Byte-level fuzzing of POST /v1/datasets on a live service: hand-crafted hostile files, then
hypothesis-generated .npy headers, PNG headers and byte flips of valid files.

Every answer must be a 2xx (the valid files) or a 4xx problem+json, a 422 naming `file`; never
a 5xx. The embedded backend is enough: parsing does not depend on the database. Each test prints
its figures (cases, statuses, 5xx) — run with `-s` to see them.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytestmark = [pytest.mark.service, pytest.mark.parametrize("service", ["embedded"], indirect=True)]
PROBLEM = "application/problem+json"
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (6, 8, 8), dtype=np.uint8)
EXAMPLES = 60  # per hypothesis test: about a minute on a shared CPU


# ---- file builders ---------------------------------------------------------------------------


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy(descr, shape, data: bytes, fortran: bool = False, version: int = 1) -> bytes:
    """A .npy file with whatever header we like (numpy's writer would refuse most of these)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    size = "<H" if version == 1 else "<I"
    header += " " * (-(8 + struct.calcsize(size) + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(size, len(header)) + header.encode("latin-1") + data


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, depth: int = 8, colour: int = 0, pixels: bytes | None = None) -> bytes:
    """A PNG with any IHDR; the pixel data fits an 8-bit greyscale image up to 64x64, or is given."""
    if pixels is None:
        pixels = zlib.compress(b"".join(b"\0" + bytes(min(width, 64)) for _ in range(min(height, 64))))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b""))


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def jpeg_with_size(width: int, height: int) -> bytes:
    """A valid 8x8 JPEG whose frame header (SOF0) is patched to declare another size."""
    data = bytearray(encoded(IMAGES[0], "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def patched_central(data: bytes, offset: int, value: int) -> bytes:
    """Set a 4-byte field of the last central directory entry (20: compressed, 24: size)."""
    out = bytearray(data)
    at = out.rindex(b"PK\x01\x02") + offset
    out[at : at + 4] = struct.pack("<I", value)
    return bytes(out)


def overlapping(members: dict[str, bytes]) -> bytes:
    """Two central directory entries pointing at the same local file (an overlap bomb's trick)."""
    data = bytearray(zipped(members))
    first, last = data.index(b"PK\x01\x02"), data.rindex(b"PK\x01\x02")
    data[last + 42 : last + 46] = data[first + 42 : first + 46]  # local header offset
    return bytes(data)


def bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("images.npy", "w", force_zip64=True) as f:
        f.write(npy("|u1", (size // 64, 8, 8), b""))
        for _ in range(size >> 20):
            f.write(bytes(1 << 20))
    return buf.getvalue()


class Evil:
    """Unpickling this writes a file: the test checks that nothing ever unpickles it."""

    marker = ""

    def __reduce__(self):
        return open, (self.marker, "w")


VALID_NPZ = npz(images=IMAGES, labels=np.arange(6) % 2)
VALID_FORTRAN = npz(images=np.asfortranarray(RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)))
VALID_ZIP = zipped({f"{i % 2}/{i}.png": encoded(IMAGES[i], "PNG") for i in range(4)})
VALID_JPEG_ZIP = zipped({f"{i}.jpg": encoded(IMAGES[i], "JPEG") for i in range(3)})
VALID = {"valid.npz": VALID_NPZ, "fortran.npz": VALID_FORTRAN, "valid.zip": VALID_ZIP, "jpeg.zip": VALID_JPEG_ZIP}


def corpus(marker: str) -> dict[str, tuple[str, bytes]]:
    """Hand-crafted hostile files: case name -> (upload file name, bytes). All must be refused."""
    Evil.marker = marker
    pickled = pickle.dumps(np.array([Evil()], dtype=object), protocol=3)
    u1 = "|u1"
    return {
        "npy-shape-2^40": ("a.npz", zipped({"images.npy": npy(u1, (2**40, 64, 64), bytes(64))})),
        "npy-shape-2^63": ("a.npz", zipped({"images.npy": npy(u1, (2**63 - 1, 2**63 - 1), b"")})),
        "npy-negative-shape": ("a.npz", zipped({"images.npy": npy(u1, (-1, 8, 8), bytes(64))})),
        "npy-object-pickle": ("a.npz", zipped({"images.npy": npy("|O", (1,), pickled)})),
        "npy-object-in-struct": ("a.npz", zipped({"images.npy": npy([("a", "|O")], (1,), pickled)})),
        "npy-unicode": ("a.npz", zipped({"images.npy": npy("<U8", (1, 8, 8), bytes(2048))})),
        "npy-void": ("a.npz", zipped({"images.npy": npy("|V64", (1,), bytes(64))})),
        "npy-datetime": ("a.npz", zipped({"images.npy": npy("<M8[s]", (1, 8, 8), bytes(512))})),
        "npy-float-images": ("a.npz", zipped({"images.npy": npy("<f4", (1, 8, 8), bytes(256))})),
        "npy-truncated": ("a.npz", zipped({"images.npy": npy(u1, (6, 8, 8), bytes(100))})),
        "npy-trailing-bytes": ("a.npz", zipped({"images.npy": npy(u1, (1, 8, 8), bytes(65))})),
        "npy-fortran-truncated": ("a.npz", zipped({"images.npy": npy(u1, (2, 8, 8), bytes(10), fortran=True)})),
        "npy-version-3": ("a.npz", zipped({"images.npy": npy(u1, (1, 8, 8), bytes(64), version=3)})),
        "npy-bad-magic": ("a.npz", zipped({"images.npy": b"\x93NUMPX\x01\x00" + bytes(100)})),
        "npy-header-not-a-dict": ("a.npz", zipped({"images.npy": b"\x93NUMPY\x01\x00\x06\x00[1,2]\n"})),
        "npy-huge-header-length": ("a.npz", zipped({"images.npy": b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{"})),
        "npy-labels-2^40": ("a.npz", zipped({"images.npy": npy(u1, (1, 8, 8), bytes(64)),
                                             "labels.npy": npy("<i8", (2**40,), b"")})),
        "zip-declared-size-small": ("a.npz", patched_central(zipped({"images.npy": npy(u1, (1, 8, 8), bytes(64))}),
                                                              24, 10)),
        "zip-declared-size-huge": ("a.npz", patched_central(VALID_NPZ, 24, 0xFFFFFFF0)),
        "zip-compressed-size-wrong": ("a.npz", patched_central(VALID_NPZ, 20, 3)),
        "zip-overlapping-entries": ("a.npz", overlapping({"images.npy": npy(u1, (1, 8, 8), bytes(64)),
                                                         "labels.npy": npy("<i8", (1,), bytes(8))})),
        "zip-many-members": ("a.npz", zipped({f"m{i}.npy": b"" for i in range(200)})),
        "zip-bomb-300MiB": ("a.npz", bomb(300 << 20)),
        "zip-nested": ("a.zip", zipped({"inner.zip": VALID_ZIP})),
        "zip-nested-npz": ("a.npz", zipped({"images.npy": VALID_NPZ})),
        "zip-bzip2": ("a.npz", zipped({"images.npy": npy(u1, (1, 8, 8), bytes(64))}, zipfile.ZIP_BZIP2)),
        "zip-lzma": ("a.zip", zipped({"a.png": png(8, 8)}, zipfile.ZIP_LZMA)),
        "zip-encrypted-flag": ("a.zip", _encrypted_flag(zipped({"a.png": png(8, 8)}))),
        "zip-traversal": ("a.zip", zipped({"../../etc/a.png": png(8, 8)})),
        "zip-empty-file": ("a.zip", b""),
        "zip-random-bytes": ("a.zip", RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "zip-only-eocd": ("a.zip", b"PK\x05\x06" + bytes(18)),
        "zip-eocd-lies-count": ("a.zip", b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 65535, 65535, 10**6, 0, 0)),
        "png-huge-dimensions": ("a.zip", zipped({"a.png": png(100_000, 100_000)})),
        "png-2^31-dimensions": ("a.zip", zipped({"a.png": png(2**31 - 1, 2**31 - 1)})),
        "png-zero-dimensions": ("a.zip", zipped({"a.png": png(0, 0)})),
        "png-truncated-idat": ("a.zip", zipped({"a.png": png(64, 64, pixels=zlib.compress(bytes(100)))})),
        "png-truncated-file": ("a.zip", zipped({"a.png": png(8, 8)[:30]})),
        "png-bad-depth": ("a.zip", zipped({"a.png": png(8, 8, depth=7)})),
        "png-16-bit": ("a.zip", zipped({"a.png": png(8, 8, depth=16)})),
        "jpeg-huge-dimensions": ("a.zip", zipped({"a.jpg": jpeg_with_size(65_000, 65_000)})),
        "jpeg-zero-dimensions": ("a.zip", zipped({"a.jpg": jpeg_with_size(0, 0)})),
        "jpeg-truncated": ("a.zip", zipped({"a.jpg": encoded(IMAGES[0], "JPEG")[:40]})),
        "png-named-jpg": ("a.zip", zipped({"a.jpg": b"GIF89a" + bytes(40)})),
    }


def _encrypted_flag(data: bytes) -> bytes:
    out = bytearray(data)
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.index(signature) + flag_at
        out[at] |= 0x1
    return bytes(out)


# ---- the check every answer passes ---------------------------------------------------------------


FIGURES: Counter = Counter()


def post(client, filename: str, data: bytes):
    response = client.post("/v1/datasets", files={"file": (filename, data, "application/octet-stream")})
    FIGURES["cases"] += 1
    FIGURES[response.status_code] += 1
    if response.status_code >= 500:
        FIGURES["5xx"] += 1
    return response


def assert_refused_or_accepted(response, valid: bool | None) -> None:
    """valid True: must be accepted; False: must be refused; None (mutations): either."""
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    if status < 300:
        assert valid is not False, f"accepted a hostile file: {response.text[:300]}"
        return
    assert valid is not True, response.text[:500]
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert {"type", "code", "title", "status", "detail", "request_id"} <= set(body)
    if status == 422:
        assert body["code"] == "invalid-upload" and body["errors"][0]["field"] == "file", body
    else:
        assert status == 413, body


@pytest.fixture(scope="module", autouse=True)
def report():
    FIGURES.clear()
    yield
    print(f"\nupload fuzz: {FIGURES['cases']} cases, 5xx: {FIGURES['5xx']}; statuses"
          f" {dict(sorted((k, v) for k, v in FIGURES.items() if isinstance(k, int)))}")


# ---- the fixed corpus ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_files_are_accepted(client, name: str) -> None:
    assert_refused_or_accepted(post(client, name, VALID[name]), valid=True)


def test_every_hand_crafted_hostile_file_is_a_422_naming_file(client, tmp_path) -> None:
    marker = tmp_path / "unpickled"
    failures = []
    for case, (filename, data) in corpus(str(marker)).items():
        response = post(client, filename, data)
        try:
            assert_refused_or_accepted(response, valid=False)
        except AssertionError as exc:
            failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures)
    assert not marker.exists(), "an object array was unpickled"


def test_a_png_whose_pixel_data_inflates_far_past_its_size_is_decoded_only_that_far(client) -> None:
    """10 MiB of IDAT behind an 8x8 header: the decoder stops at 8x8 (bounded), so it is accepted."""
    image = png(8, 8, pixels=zlib.compress(bytes(10 << 20)))
    response = post(client, "idat.zip", zipped({"a.png": image}))
    assert_refused_or_accepted(response, valid=True)
    assert response.json()["image_size"] == 8


def test_the_crafted_header_of_the_issue_is_a_422_saying_why(client) -> None:
    filename, data = corpus("unused")["npy-shape-2^40"]
    body = post(client, filename, data).json()
    assert body["status"] == 422 and body["errors"][0]["file"] == "images.npy"
    assert "shape (1099511627776, 64, 64)" in body["detail"] and "the limit is" in body["detail"]


# ---- generated cases -----------------------------------------------------------------------------

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DESCRS = ["|u1", "<u2", ">i8", "<i4", "|b1", "<f8", "<c16", "|O", "<U3", "|S2", "|V4", "<M8[D]", [("x", "|u1")],
          "(2,)u1", "|u1x", ""]
DIMENSION = st.one_of(st.integers(0, 70), st.integers(-(2**63), 2**63), st.sampled_from([2**31, 2**32, 2**40]))


@FUZZ
@given(descr=st.sampled_from(DESCRS), shape=st.lists(DIMENSION, max_size=6).map(tuple),
       fortran=st.booleans(), data_len=st.integers(0, 5000), labels=st.booleans())
def test_generated_npy_headers(client, descr, shape, fortran, data_len, labels) -> None:
    members = {"images.npy": npy(descr, shape, bytes(data_len), fortran)}
    if labels:
        members["labels.npy"] = npy(descr, shape[:1], bytes(data_len // 64), fortran)
    assert_refused_or_accepted(post(client, "f.npz", zipped(members)), valid=None)


@FUZZ
@given(width=st.one_of(st.integers(0, 80), st.integers(0, 2**32 - 1)),
       height=st.one_of(st.integers(0, 80), st.integers(0, 2**32 - 1)),
       depth=st.sampled_from([1, 2, 4, 8, 16, 3]), colour=st.sampled_from([0, 2, 3, 4, 6, 5]),
       cut=st.integers(0, 200))
def test_generated_png_headers(client, width, height, depth, colour, cut) -> None:
    image = png(width, height, depth, colour, pixels=zlib.compress(bytes(min(width * height, 20_000))))
    image = image[: len(image) - cut] if cut < 100 else image
    assert_refused_or_accepted(post(client, "f.zip", zipped({"a.png": image})), valid=None)


@FUZZ
@given(name=st.sampled_from(sorted(VALID)), flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255)),
                                                          min_size=1, max_size=8),
       truncate=st.one_of(st.none(), st.integers(0)))
def test_byte_flips_of_valid_files(client, name, flips, truncate) -> None:
    data = bytearray(VALID[name])
    for position, value in flips:
        data[position % len(data)] = value
    if truncate is not None:
        del data[truncate % len(data):]
    assert_refused_or_accepted(post(client, name, bytes(data)), valid=None)
