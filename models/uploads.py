"""Safe parsing of user-uploaded datasets into an `ImageSet`, and their canonical storage form.

Uploads come from strangers, so nothing here trusts them, and every bound is checked on a
header before the memory it describes is allocated:

1. the zip central directory: at most `max_members` entries (counted on the raw bytes, before
   `zipfile` builds an object per entry), stored or deflated only (bzip2/lzma reach ratios no
   real dataset needs), no encryption, declared sizes within `max_uncompressed_bytes` together;
2. each member is then read in chunks, counting actual bytes, so one lying about its size stops
   at its declaration (overlapping entries and bombs included);
3. a `.npy` header (shape, dtype, order) is parsed with numpy's header reader and checked
   (a plain uint8/integer dtype, never an object dtype, so nothing is unpickled; non-negative
   dimensions; declared bytes within the limit and equal to the bytes present) before the array
   is made — as a view of the member's bytes, not a copy;
4. a PNG/JPEG header's dimensions are checked (at most `max_image_size` per side) before any
   pixel is decoded, with Pillow's own bomb check as a second line.

Member names are checked although nothing is ever written to disk (path traversal is a sign of
a hostile archive). Every refusal is an `UploadError` naming the file and the allowed values,
which the api turns into a 422.

Peak memory of one `parse_upload` + `to_npz_bytes`, beyond the upload's own bytes
(`max_bytes`), measured by tests/models/test_uploads.py: the members (<= U =
`max_uncompressed_bytes`, read into one buffer each), the image array (a view of the members
for a C-ordered .npz; one copy, <= U, for a Fortran-ordered one or a zip of images), and the
canonical form's encoding (numpy's write chunks, 2 x min(array, 16 MiB), and the compressed
output twice). So at most `max_bytes + 4 U + 32 MiB` (1.1 GiB at the defaults, reached only by
incompressible data; a typical upload needs about twice its decompressed size). The api parses
at most `REGDIFF_MAX_CONCURRENT_UPLOADS` uploads at once per process.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from models.datasets import ImageSet

MIN_IMAGE_SIZE = 8
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
UPLOAD_EXTENSIONS = (".npz", ".zip")
NPZ_ARRAYS = ("images", "labels")
_CHUNK = 1 << 20
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_CENTRAL_ENTRY = b"PK\x01\x02"  # the signature that starts every central directory entry
_NPZ_MAX_MEMBERS = 16  # 'images' and 'labels'; a little room so extra names get a clear message
_ZIP_EXTRA_MEMBERS = 1000  # folders and macOS metadata next to the images
# Pillow modes we accept, and what they become: palette PNGs are common, 1-bit is grey, and
# matplotlib saves opaque RGBA (alpha is dropped only when every pixel is opaque).
_MODES = {"L": "L", "1": "L", "LA": "L", "RGB": "RGB", "P": "RGB", "RGBA": "RGB"}


class UploadError(ValueError):
    """A refused upload: `file` is the upload or member at fault; `message` says why and what is allowed."""

    def __init__(self, file: str, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 64 << 20  # the upload itself
    max_images: int = 100_000
    max_image_size: int = 64  # pixels per side; UNet presets go up to 64x64
    channels: tuple[int, ...] = (1, 3)
    max_uncompressed_bytes: int = 256 << 20  # all archive members together, once decompressed
    max_classes: int = 1000


def content_hash(data: bytes) -> str:
    """sha256 hex digest, for deduplication and integrity checks."""
    return hashlib.sha256(data).hexdigest()


def parse_upload(filename: str, data: bytes, limits: UploadLimits = UploadLimits()) -> ImageSet:
    """Parse an `.npz` (arrays `images`, optional `labels`) or a `.zip` of PNG/JPEG images."""
    if len(data) > limits.max_bytes:
        raise UploadError(filename, f"upload is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in UPLOAD_EXTENSIONS:
        raise UploadError(
            filename,
            f"unknown file type {suffix or '(none)'!r}; allowed: .npz (arrays 'images', optional 'labels')"
            " or .zip (PNG/JPEG images, optionally one folder per class)",
        )
    max_members = _NPZ_MAX_MEMBERS if suffix == ".npz" else limits.max_images + _ZIP_EXTRA_MEMBERS
    members = _read_archive(filename, data, limits, max_members)
    if not members:
        raise UploadError(filename, "the archive is empty; allowed: arrays 'images' (+ 'labels'), or images")
    data_set = _from_npz(members, limits) if suffix == ".npz" else _from_images(filename, members, limits)
    _check_set(filename, data_set, limits)
    return data_set


def to_npz_bytes(data: ImageSet) -> bytes:
    """The canonical storage form: compressed npz of uint8 `images` (N,H,W,C) and int64 `labels`.

    Deterministic (numpy writes fixed zip timestamps), so equal sets give equal bytes and hashes.
    """
    arrays = {"images": np.ascontiguousarray(data.images, dtype=np.uint8)}
    if data.labels is not None:
        arrays["labels"] = np.asarray(data.labels, dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_npz_bytes(data: bytes) -> ImageSet:
    """Inverse of `to_npz_bytes`, for stored sets (already validated on upload; still no pickle)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        labels = f["labels"] if "labels" in f.files else None
        return ImageSet(f["images"], labels)


def describe(data: ImageSet) -> dict[str, int | None]:
    """Shape facts the api shows for a dataset, and the trainer checks against a preset."""
    n, size, _, channels = data.images.shape
    num_classes = None if data.labels is None or n == 0 else int(data.labels.max()) + 1
    return {"image_size": size, "channels": channels, "count": n, "num_classes": num_classes}


# ---- archives: bounded reading -------------------------------------------------------------


def _read_archive(filename: str, data: bytes, limits: UploadLimits, max_members: int) -> dict[str, bytearray]:
    """Every file member (skipping folders and macOS metadata) -> its bytes, within the size limits."""
    # An upper bound on the entries zipfile would parse (each starts with this signature): a
    # 64 MiB central directory of empty entries would otherwise be a million ZipInfo objects.
    if data.count(_CENTRAL_ENTRY) > max_members:
        raise UploadError(filename, f"more than {max_members:,} archive members; the limit is {max_members:,}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                _check_member_name(info.filename)  # first: an empty name breaks ZipInfo.is_dir
            infos = [i for i in zf.infolist() if not i.is_dir()]
            for info in infos:
                _check_method(info)
            infos = [i for i in infos if not _is_junk(i.filename)]
            _check_declared_sizes(infos, limits)
            budget = limits.max_uncompressed_bytes
            members = {}
            for info in infos:
                members[info.filename] = _read_member(zf, info, budget)
                budget -= len(members[info.filename])
            return members
    except UploadError:
        raise
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError) as exc:
        # a corrupt central directory, or one asking for a zip version this reader lacks
        suffix = PurePosixPath(filename).suffix
        raise UploadError(filename, f"not a valid {suffix} archive ({exc})") from None


def _is_junk(name: str) -> bool:
    """macOS adds __MACOSX/ and .DS_Store to zips made in Finder; they are not images."""
    parts = name.replace("\\", "/").split("/")
    return any(part == "__MACOSX" or part.startswith(".") for part in parts)


def _check_member_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    absolute = name.startswith(("/", "\\")) or name[1:2] == ":"  # /x, \\x, C:x
    if absolute or ".." in parts or "\0" in name or not name:
        raise UploadError(name or "(empty name)", "unsafe path (empty, absolute or with '..'); allowed: plain"
                          " relative names")


def _check_method(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise UploadError(info.filename, "encrypted archive member; use a plain, unencrypted zip")
    if info.compress_type not in _ZIP_METHODS:
        raise UploadError(info.filename, f"compression method {info.compress_type}; allowed:"
                          f" {', '.join(_ZIP_METHODS.values())} (what np.savez and every zip tool write)")


def _check_declared_sizes(infos: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > limits.max_uncompressed_bytes or total > limits.max_uncompressed_bytes:
            raise UploadError(
                info.filename,
                f"the archive decompresses to more than {limits.max_uncompressed_bytes:,} bytes"
                " (a zip bomb, or simply too large); upload a smaller dataset",
            )


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytearray:
    """Into one buffer of the declared size (already checked against the limit), in chunks: no
    second copy, and a member lying about its size is stopped at its declaration."""
    out = bytearray(min(budget, info.file_size))
    size = 0
    try:
        with zf.open(info) as f:
            while chunk := f.read(_CHUNK):
                if size + len(chunk) > len(out):
                    raise UploadError(info.filename, "decompresses beyond its declared size or the limit")
                out[size : size + len(chunk)] = chunk
                size += len(chunk)
    except (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, UploadError):
            raise
        # CRC errors, truncated or corrupt deflate data (zlib.error), a local header that disagrees
        message = f"cannot read this archive member ({exc}); use a plain, unencrypted zip"
        raise UploadError(info.filename, message) from None
    del out[size:]  # shorter than declared: shrinks in place
    return out


# ---- .npz ------------------------------------------------------------------------------------


def _from_npz(members: dict[str, bytearray], limits: UploadLimits) -> ImageSet:
    arrays = {}
    for name, raw in members.items():
        key = name.removesuffix(".npy")
        if key not in NPZ_ARRAYS:
            raise UploadError(name, f"unexpected array {key!r}; allowed: {', '.join(NPZ_ARRAYS)}")
        arrays[key] = _load_array(name, raw, limits)
    if "images" not in arrays:
        raise UploadError("images.npy", "no 'images' array; save with np.savez(f, images=..., labels=...)")
    return ImageSet(_as_nhwc(arrays["images"]), _as_labels(arrays.get("labels")))


def _load_array(name: str, raw: bytearray, limits: UploadLimits) -> np.ndarray:
    """A .npy member -> an array viewing `raw`, after its header passed every check (no allocation)."""
    stream = io.BytesIO(raw[:_NPY_HEADER_BYTES])  # BytesIO copies a bytearray: only the header
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_READERS:
            raise ValueError(f"format version {version[0]}.{version[1]}; allowed: 1.0, 2.0")
        shape, fortran_order, dtype = _NPY_READERS[version](stream)
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise UploadError(name, f"not a valid .npy array ({exc}); save with np.savez") from None
    _check_dtype(name, dtype)
    if any(dim < 0 for dim in shape):
        raise UploadError(name, f"shape {shape}; allowed: non-negative dimensions, (N, H, W[, C]) or (N,)")
    count = math.prod(shape)  # Python ints: no overflow, whatever the header says
    declared = count * dtype.itemsize
    if declared > limits.max_uncompressed_bytes:
        raise UploadError(name, f"shape {shape} of {dtype} is {declared:,} bytes; the limit is"
                          f" {limits.max_uncompressed_bytes:,}")
    present = len(raw) - stream.tell()
    if present != declared:
        raise UploadError(name, f"the header declares {declared:,} bytes of data (shape {shape}, {dtype})"
                          f" but {present:,} follow; the file is truncated or corrupt")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def _check_dtype(name: str, dtype: np.dtype) -> None:
    """Plain numbers only (the arrays' own checks then ask for uint8 images, integer labels): an
    object dtype would need unpickling, which never happens here."""
    if dtype.hasobject:
        raise UploadError(name, "holds Python objects (a pickle), which are never loaded; save plain uint8/int arrays")
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise UploadError(name, f"dtype {dtype}; allowed: uint8 images, integer labels")


_NPY_HEADER_BYTES = 16 << 10  # numpy itself refuses headers over 10,000 bytes
_NPY_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        hint = "e.g. (x * 255).round().astype(np.uint8) for x in [0, 1]"
        raise UploadError("images.npy", f"dtype is {images.dtype}; allowed: uint8 (0..255), {hint}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise UploadError("images.npy", f"shape is {images.shape}; allowed: (N, H, W) or (N, H, W, C)")
    return np.ascontiguousarray(images)


def _as_labels(labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        message = f"labels are {labels.dtype} {labels.shape}; allowed: integers, shape (N,)"
        raise UploadError("labels.npy", message)
    return labels.astype(np.int64)


# ---- .zip of images --------------------------------------------------------------------------


def _from_images(filename: str, members: dict[str, bytearray], limits: UploadLimits) -> ImageSet:
    if len(members) > limits.max_images:  # before decoding any of them
        raise UploadError(filename, f"{len(members):,} files; the limit is {limits.max_images:,} images")
    paths = _strip_wrapper([PurePosixPath(name.replace("\\", "/")) for name in members])
    labels = _folder_labels(paths)
    names = list(members)
    first = _decode(names[0], members[names[0]], limits)  # (H, W, C): fixes the shape for all
    if len(names) * first.nbytes > limits.max_uncompressed_bytes:
        raise UploadError(
            names[0], f"{len(names):,} images of {_shape_text(first)} decode to {len(names) * first.nbytes:,}"
            f" bytes; the limit is {limits.max_uncompressed_bytes:,}",
        )
    images = np.empty((len(names), *first.shape), np.uint8)  # (N, H, W, C)
    for i, name in enumerate(names):
        image = first if i == 0 else _decode(name, members[name], limits)
        if image.shape != first.shape:
            raise UploadError(
                name,
                f"image is {_shape_text(image)} but {names[0]} is {_shape_text(first)};"
                " all images must have the same size and channel count",
            )
        images[i] = image
    return ImageSet(images, labels)


def _strip_wrapper(paths: list[PurePosixPath]) -> list[PurePosixPath]:
    """Zipping a folder puts everything under that folder's name; that level is no class."""
    tops = {p.parts[0] for p in paths}
    if len(tops) == 1 and all(len(p.parts) > 1 for p in paths):
        return [PurePosixPath(*p.parts[1:]) for p in paths]
    return paths


def _folder_labels(paths: list[PurePosixPath]) -> np.ndarray | None:
    """Flat: no labels. One folder per class: labels by sorted folder name (numeric if all are numbers)."""
    depths = {len(p.parts) for p in paths}
    if depths <= {1}:
        return None
    if depths != {2}:
        raise UploadError(
            str(next(p for p in paths if len(p.parts) != 2)),
            "mixed layout; allowed: all images at the top level (unlabelled),"
            " or each in one class folder (class/img.png)",
        )
    names = sorted({p.parts[0] for p in paths})
    if all(n.isdigit() for n in names):
        names.sort(key=int)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[p.parts[0]] for p in paths], dtype=np.int64)


def _decode(name: str, raw: bytearray, limits: UploadLimits) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, C), refusing oversized headers before decoding any pixel."""
    if PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
        raise UploadError(name, f"not an image file; allowed in a .zip: {', '.join(IMAGE_EXTENSIONS)}")
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"]) as im:
            _check_size(name, *im.size, limits)
            _check_mode(name, im)
            array = np.asarray(im.convert(_MODES[im.mode]), dtype=np.uint8)
    except UploadError:
        raise
    except Image.DecompressionBombError as exc:
        raise UploadError(name, f"decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for corrupt or unknown data
        raise UploadError(name, f"cannot decode this image ({exc}); allowed: PNG or JPEG") from None
    return array if array.ndim == 3 else array[..., None]


def _check_mode(name: str, im: Image.Image) -> None:
    transparent = "A" in im.mode and im.getchannel("A").getextrema() != (255, 255)
    if im.mode not in _MODES or transparent:
        mode = f"{im.mode} with transparency" if transparent else im.mode
        raise UploadError(
            name, f"image mode {mode}; allowed: 8-bit greyscale or RGB, opaque (flatten transparency first)"
        )


def _shape_text(image: np.ndarray) -> str:
    h, w, c = image.shape
    return f"{w}x{h} with {c} channel{'s' if c > 1 else ''}"


# ---- checks common to both forms -------------------------------------------------------------


def _check_size(name: str, width: int, height: int, limits: UploadLimits) -> None:
    if width != height or not MIN_IMAGE_SIZE <= width <= limits.max_image_size:
        raise UploadError(
            name,
            f"images are {width}x{height}; allowed: square, {MIN_IMAGE_SIZE} to {limits.max_image_size}"
            " pixels per side (the networks are sized for small square images; resize or crop first)",
        )


def _check_set(filename: str, data: ImageSet, limits: UploadLimits) -> None:
    n, height, width, channels = data.images.shape
    if n == 0:
        raise UploadError(filename, "no images found; allowed: at least one image")
    if n > limits.max_images:
        raise UploadError(filename, f"{n:,} images; the limit is {limits.max_images:,}")
    _check_size(filename, width, height, limits)
    if channels not in limits.channels:
        raise UploadError(filename, f"{channels} channels; allowed: {', '.join(map(str, limits.channels))}")
    if data.labels is not None:
        _check_labels(filename, data.labels, n, limits)


def _check_labels(filename: str, labels: np.ndarray, n: int, limits: UploadLimits) -> None:
    if len(labels) != n:
        raise UploadError(filename, f"{len(labels):,} labels for {n:,} images; allowed: one per image")
    if labels.min() < 0 or labels.max() >= limits.max_classes:
        raise UploadError(
            filename,
            f"labels range {labels.min()}..{labels.max()}; allowed: 0 to {limits.max_classes - 1}",
        )
