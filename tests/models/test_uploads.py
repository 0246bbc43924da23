"""Uploads: good .npz and .zip files round-trip; every hostile or malformed one is refused
with an UploadError that names the file and what is allowed."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from models.datasets import ImageSet
from models.uploads import (
    UploadError,
    UploadLimits,
    content_hash,
    describe,
    parse_upload,
    read_npz_bytes,
    to_npz_bytes,
)

RNG = np.random.default_rng(0)
LIMITS = UploadLimits()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _refused(filename: str, data: bytes, match: str, limits: UploadLimits = LIMITS) -> UploadError:
    with pytest.raises(UploadError, match=match) as exc:
        parse_upload(filename, data, limits)
    assert exc.value.file and exc.value.message
    return exc.value


# ---- good uploads round-trip --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 16, 16), (5, 16, 16, 1), (5, 16, 16, 3)])
@pytest.mark.parametrize("with_labels", [True, False])
def test_npz_round_trip(shape: tuple[int, ...], with_labels: bool) -> None:
    images = RNG.integers(0, 256, shape, dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0], np.int32)
    data = parse_upload("set.npz", _npz(images=images, **({"labels": labels} if with_labels else {})), LIMITS)
    assert data.images.shape == (*shape[:3], shape[3] if len(shape) == 4 else 1)
    np.testing.assert_array_equal(data.images.reshape(shape), images)
    assert describe(data) == {"image_size": 16, "channels": data.images.shape[3], "count": 5,
                              "num_classes": 3 if with_labels else None}  # fmt: skip
    stored = read_npz_bytes(to_npz_bytes(data))
    np.testing.assert_array_equal(stored.images, data.images)
    assert (stored.labels is None) == (not with_labels)
    if with_labels:
        assert stored.labels.dtype == np.int64 and stored.labels.tolist() == labels.tolist()


def test_storage_form_is_deterministic() -> None:
    data = ImageSet(RNG.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8), np.arange(4))
    copy = ImageSet(data.images.copy(), data.labels.copy())
    assert content_hash(to_npz_bytes(data)) == content_hash(to_npz_bytes(copy))
    assert len(content_hash(b"")) == 64


def test_zip_of_pngs_flat() -> None:
    images = RNG.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    data = parse_upload("imgs.zip", _zip({f"{i}.png": _png(im) for i, im in enumerate(images)}), LIMITS)
    assert data.labels is None
    np.testing.assert_array_equal(data.images, images)


def test_zip_with_class_folders_inside_a_wrapper_folder() -> None:
    gray = RNG.integers(0, 256, (12, 12), dtype=np.uint8)
    members = {
        f"mydata/{cls}/{i}.{ext}": _png(gray, fmt)
        for cls in ("10", "2", "0")
        for i, (ext, fmt) in enumerate([("png", "PNG"), ("jpg", "JPEG")])
    }
    members["mydata/.DS_Store"] = b"junk"
    members["__MACOSX/mydata/._0.png"] = b"junk"
    data = parse_upload("classes.zip", _zip(members), LIMITS)
    assert data.images.shape == (6, 12, 12, 1)
    assert data.labels.tolist() == [2, 2, 1, 1, 0, 0], "numeric folder names sort numerically"
    np.testing.assert_array_equal(data.images[0, ..., 0], gray)


def test_opaque_rgba_is_accepted_as_rgb() -> None:
    rgba = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    data = parse_upload("a.zip", _zip({"a.png": _png(rgba)}), LIMITS)
    np.testing.assert_array_equal(data.images[0], rgba[..., :3])


# ---- bad uploads are refused ----------------------------------------------------------------------


def test_unknown_extension() -> None:
    _refused("data.tar.gz", b"...", r"allowed: \.npz")


def test_too_many_bytes() -> None:
    _refused("big.npz", b"\0" * 2000, "limit is 1,000", UploadLimits(max_bytes=1000))


def test_corrupt_npz() -> None:
    _refused("broken.npz", _npz(images=np.zeros((2, 8, 8), np.uint8))[:-40], "not a valid .npz archive")


def test_corrupt_array_inside_npz() -> None:
    _refused("broken.npz", _zip({"images.npy": b"\x93NUMPY garbage"}), "not a valid .npy array")


def test_pickle_bearing_npz() -> None:
    err = _refused("evil.npz", _npz(images=np.array([{"a": 1}, None], dtype=object)), "pickle")
    assert err.file == "images.npy"


def test_wrong_dtype() -> None:
    _refused("float.npz", _npz(images=np.zeros((2, 8, 8), np.float32)), "allowed: uint8")


def test_unexpected_array_and_missing_images() -> None:
    images = np.zeros((2, 8, 8), np.uint8)
    _refused("x.npz", _npz(images=images, extra=np.zeros(2)), "allowed: images, labels")
    _refused("x.npz", _npz(labels=np.zeros(2, np.int64)), "no 'images' array")


def test_bad_labels() -> None:
    images = np.zeros((3, 8, 8), np.uint8)
    _refused("x.npz", _npz(images=images, labels=np.zeros(2, np.int64)), "one per image")
    _refused("x.npz", _npz(images=images, labels=np.array([0.5, 1, 2])), "allowed: integers")
    _refused("x.npz", _npz(images=images, labels=np.array([0, -1, 2])), "allowed: 0 to 999")


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 8, 9), "square"),
        ((2, 4, 4), "8 to 64"),
        ((2, 128, 128), "8 to 64"),
        ((2, 8, 8, 2), "allowed: 1, 3"),
        ((2, 8, 8, 3, 1), r"allowed: \(N, H, W\)"),
    ],
)
def test_bad_image_shapes_in_npz(shape: tuple[int, ...], match: str) -> None:
    _refused("x.npz", _npz(images=np.zeros(shape, np.uint8)), match)


def test_too_large_image_in_zip() -> None:
    err = _refused("x.zip", _zip({"big.png": _png(np.zeros((128, 128), np.uint8))}), "8 to 64 pixels")
    assert err.file == "big.png"


def test_too_many_images() -> None:
    _refused("x.npz", _npz(images=np.zeros((11, 8, 8), np.uint8)), "limit is 10", UploadLimits(max_images=10))


def test_empty_archives() -> None:
    _refused("empty.zip", _zip({}), "empty")
    _refused("empty.zip", _zip({"only/": b""}), "empty")
    _refused("empty.npz", _npz(images=np.zeros((0, 8, 8), np.uint8)), "no images")


def test_zip_bomb_is_refused_before_decompressing() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb.png", "w") as f:
        for _ in range(300):  # 300 MiB of zeros, about 300 KB on disk
            f.write(bytes(1 << 20))
    assert len(buf.getvalue()) < 1 << 20
    err = _refused("bomb.zip", buf.getvalue(), "zip bomb")
    assert err.file == "bomb.png"


def test_many_members_that_add_up_to_a_bomb() -> None:
    members = {f"{i}.png": bytes(400_000) for i in range(3)}
    limits = UploadLimits(max_uncompressed_bytes=1_000_000)
    _refused("x.zip", _zip(members), "more than 1,000,000 bytes", limits)


def test_png_decompression_bomb_header() -> None:
    """A PNG that declares 30000x30000 pixels in a few bytes: refused from its header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))  # 8-bit greyscale
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")
    _refused("x.zip", _zip({"huge.png": png}), "decompression bomb|8 to 64")


@pytest.mark.parametrize("name", ["../x.png", "/etc/x.png", "a/../../x.png", "C:/x.png", "..\\x.png"])
def test_path_traversal_names(name: str) -> None:
    err = _refused("x.zip", _zip({name: _png(np.zeros((8, 8), np.uint8))}), "unsafe path")
    assert err.file == name


def test_mixed_sizes() -> None:
    members = {"a.png": _png(np.zeros((8, 8), np.uint8)), "b.png": _png(np.zeros((16, 16), np.uint8))}
    err = _refused("x.zip", _zip(members), "same size and channel count")
    assert err.file == "b.png" and "16x16" in err.message


def test_mixed_channels() -> None:
    members = {"a.png": _png(np.zeros((8, 8), np.uint8)), "b.png": _png(np.zeros((8, 8, 3), np.uint8))}
    _refused("x.zip", _zip(members), "same size and channel count")


def test_mixed_layout() -> None:
    members = {"a.png": _png(np.zeros((8, 8), np.uint8)), "cls/b.png": _png(np.zeros((8, 8), np.uint8))}
    _refused("x.zip", _zip(members), "mixed layout")


def test_non_image_member_and_corrupt_image() -> None:
    _refused("x.zip", _zip({"notes.txt": b"hello"}), r"allowed in a \.zip: \.png")
    _refused("x.zip", _zip({"bad.png": b"\x89PNG not really"}), "cannot decode")
    _refused("x.zip", _zip({"fake.png": _png(np.zeros((8, 8), np.uint8), "GIF")}), "cannot decode")


def test_transparent_image() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    _refused("x.zip", _zip({"t.png": _png(rgba)}), "transparency")


def test_small_pngs_that_decode_beyond_the_limit() -> None:
    """Flat PNGs compress ~100x: the decoded size is bounded as well as the archive's."""
    members = {f"{i}.png": _png(np.zeros((64, 64), np.uint8)) for i in range(3)}
    assert sum(map(len, members.values())) < 1000
    _refused("x.zip", _zip(members), "decode to 12,288 bytes", UploadLimits(max_uncompressed_bytes=10_000))


def test_too_many_files_in_zip_before_decoding() -> None:
    members = {f"{i}.png": b"never decoded" for i in range(4)}
    err = _refused("x.zip", _zip(members), "4 files; the limit is 3", UploadLimits(max_images=3))
    assert err.file == "x.zip"


# ---- headers are checked before anything is allocated ---------------------------------------------


def npy_with_header(descr: str, shape: tuple, data: bytes, fortran: bool = False) -> bytes:
    """A .npy file with any header numpy's reader accepts, whatever the data that follows."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") + data


def test_a_header_declaring_petabytes_is_refused_before_any_allocation() -> None:
    huge = _zip({"images.npy": npy_with_header("|u1", (2**40, 64, 64), bytes(64))})
    err = _refused("x.npz", huge, r"shape \(1099511627776, 64, 64\) of uint8 is 4,503,599,627,370,496 bytes")
    assert err.file == "images.npy"


@pytest.mark.parametrize(("shape", "data", "match"), [
    ((-1, 8, 8), b"", "non-negative dimensions"),
    ((3, 8, 8), bytes(100), "declares 192 bytes of data .* but 100 follow"),  # truncated
    ((1, 8, 8), bytes(65), "declares 64 bytes of data .* but 65 follow"),  # trailing bytes
])
def test_npy_headers_that_disagree_with_their_data(shape: tuple, data: bytes, match: str) -> None:
    _refused("x.npz", _zip({"images.npy": npy_with_header("|u1", shape, data)}), match)


@pytest.mark.parametrize("descr", ["<U4", "|V8", "|S3", [("a", "|u1")], "<M8[s]"])
def test_dtypes_that_are_not_plain_numbers(descr) -> None:
    _refused("x.npz", _zip({"images.npy": npy_with_header(descr, (1,), bytes(64))}), "allowed: uint8 images")


def test_an_object_array_is_refused_without_unpickling(tmp_path) -> None:
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    import pickle

    payload = npy_with_header("|O", (1,), pickle.dumps(np.array([Evil()], dtype=object), protocol=3))
    _refused("x.npz", _zip({"images.npy": payload}), "a pickle")
    assert not marker.exists()


def test_fortran_ordered_arrays_are_read_in_their_order() -> None:
    images = np.asfortranarray(RNG.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    assert np.array_equal(parse_upload("x.npz", _npz(images=images)).images, images)


def test_npy_format_3_is_refused() -> None:
    data = bytearray(npy_with_header("|u1", (1, 8, 8), bytes(64)))
    data[6] = 3
    _refused("x.npz", _zip({"images.npy": bytes(data)}), "format version 3.0; allowed: 1.0, 2.0")


def test_member_count_is_capped_before_the_central_directory_is_parsed() -> None:
    npz = _zip({f"a{i}.npy": b"" for i in range(17)})
    err = _refused("x.npz", npz, "more than 16 archive members")
    assert err.file == "x.npz"
    # a zip of images: max_images, plus room for folders and macOS metadata
    _refused("x.zip", _zip({f"{i}.png": b"" for i in range(1003)}), "more than 1,002 archive members",
             UploadLimits(max_images=2))


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compression_methods_beyond_deflate_are_refused(method: int) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("images.npy", _npz(images=np.zeros((1, 8, 8), np.uint8)))
    _refused("x.npz", buf.getvalue(), "compression method .*; allowed: stored, deflated")


def test_a_member_that_decompresses_past_its_declared_size_stops_there() -> None:
    data = bytearray(_zip({"images.npy": bytes(10_000)}))
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 100)  # declares 100 bytes, inflates to 10,000
    _refused("x.npz", bytes(data), "beyond its declared size|differ|Bad|cannot read")


def test_peak_memory_of_a_parse_stays_within_the_stated_bound() -> None:
    """The module docstring's bound, measured: numpy and Python allocations both count in tracemalloc."""
    import tracemalloc

    images = RNG.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)  # 3 MiB, incompressible
    data = _npz(images=np.asfortranarray(images))  # the Fortran order forces the one copy allowed
    tracemalloc.start()
    try:
        canonical = to_npz_bytes(parse_upload("x.npz", data))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = images.nbytes
    stated = n + n + 2 * min(n, 16 << 20) + 2 * len(canonical)  # members, copy, write chunks, output
    assert peak <= stated, f"{peak:,} bytes > {stated:,}"
