"""Image codecs for data sources: files and database cells in, uint8 pixel arrays out (and PNG/.npy back out).

This module owns the rule that stored bytes are never executed: `.npy` cells are always read with
`allow_pickle=False`, and pickled Python objects (what many tutorials store with `pickle.dumps(array)`) are refused
unless the caller explicitly allows them. Imports Pillow and NumPy only, never TensorFlow.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np

from buildsys.errors import DataError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"BM": "bmp", b"\x93NUMPY": "npy"}
_PICKLE_REFUSED = (
    "holds a pickled Python object; unpickling runs whatever code the stored bytes name, so buildsys refuses "
    "it. Store images as PNG or .npy instead (python -m buildsys data import does), or, only for a database you "
    "trust, declare datasets.sql(..., unsafe_pickle=True)"
)

OBJECT_ARRAYS_REFUSED = "holds an object array; object arrays are refused (reading one unpickles it)"

log = logging.getLogger("buildsys")


def _from_pil(image: object, size: tuple[int, int] | None, color_mode: str | None) -> np.ndarray:
    """Converts a Pillow image to the colour mode (native when None) and resizes it to `size` (height, width)."""
    from PIL import Image

    if color_mode is None:
        color_mode = "grayscale" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "rgb"
    image = image.convert("L" if color_mode == "grayscale" else "RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_image_file(
    path: Path | str, size: tuple[int, int] | None, color_mode: str | None, data: bytes | None = None
) -> np.ndarray:
    """Decodes a PNG/JPEG/BMP file into uint8 pixels, converted and resized as asked.

    `data` is the file's content when it was already read elsewhere (Spark's binaryFile reader on an executor,
    an object store), so every reader decodes a file with this one function and gets the same pixels; `path`
    then only names it in errors.

    Raises:
        DataError: naming the file when it cannot be decoded.
    """
    from PIL import UnidentifiedImageError

    try:
        return _decode_image(path if data is None else io.BytesIO(data), size, color_mode)
    except UnidentifiedImageError:  # Pillow's own message names the file again, or an anonymous buffer
        raise DataError(f"{path}: cannot decode the image (not a PNG, JPEG or BMP image)") from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except DataError as error:
        raise DataError(f"{path}: {error}") from None


def _decode_image(source: Path | str | io.BytesIO, size: tuple[int, int] | None, color_mode: str | None) -> np.ndarray:
    """Pillow's decoding of one image, its failures on bad bytes as one `DataError` (the caller says where).

    Pillow raises many types for corrupt input besides OSError (SyntaxError from a plugin's parser, struct.error,
    zlib.error, EOFError, DecompressionBombError for a header that claims billions of pixels): any of them
    means these bytes are not an image it can decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            return _from_pil(image, size, color_mode)
    except (UnidentifiedImageError, FileNotFoundError):
        raise
    except Exception as error:  # see the docstring: every type here is a corrupt image
        raise DataError(f"cannot decode the image ({one_line(error)})") from None


def sniff(data: bytes) -> str | None:
    """The container format of stored image bytes (png, jpeg, bmp, npy), or None when there is no known header."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def looks_pickled(data: bytes) -> bool:
    """True for bytes framed like a pickle of protocol 2 or later: PROTO opcode, version, ..., STOP."""
    return len(data) > 3 and data[0] == 0x80 and 2 <= data[1] <= 5 and data.endswith(b".")


def decode_cell(
    data: bytes,
    *,
    shape: tuple[int, ...],
    cell_format: str = "auto",
    unsafe_pickle: bool = False,
    where: str = "cell",
) -> np.ndarray:
    """Decodes one stored image into uint8 pixels shaped `shape` ((H, W) or (H, W, C)).

    PNG/JPEG/BMP are converted to the shape's colour mode and resized; `.npy` and raw bytes must already hold
    exactly `shape` (a trailing channel of 1 may be present or absent). In `auto`, bytes without a known header
    whose length is the pixel count are raw pixels.

    Raises:
        DataError: `where` followed by what was wrong: undecodable bytes, a wrong shape, or a refused pickle.
    """
    data = bytes(data)
    raw_size = int(np.prod(shape))
    kind = sniff(data) if cell_format == "auto" else cell_format
    if kind is None and len(data) == raw_size:
        kind = "raw"
    try:
        pixels = _decode(data, kind, shape, unsafe_pickle, where)
    except DataError:
        # Raw pixels may begin with bytes that look like a header ("BM" starts 1 row in 65,536): in auto mode, a
        # cell of exactly the pixel count that does not decode as the format it resembles is raw pixels.
        if cell_format != "auto" or kind == "raw" or len(data) != raw_size:
            raise
        pixels = np.frombuffer(data, dtype=np.uint8)
    return conform(pixels, shape, where)


def _decode(data: bytes, kind: str | None, shape: tuple[int, ...], unsafe_pickle: bool, where: str) -> np.ndarray:
    if kind in ("png", "jpeg", "bmp"):
        from PIL import UnidentifiedImageError

        color_mode = "rgb" if len(shape) == 3 and shape[2] == 3 else "grayscale"
        try:
            return _decode_image(io.BytesIO(data), shape[:2], color_mode)
        except UnidentifiedImageError:
            raise DataError(f"{where}: cannot decode the {kind.upper()} image (not a {kind.upper()} image)") from None
        except DataError as error:
            raise DataError(f"{where}: {str(error).replace('the image', f'the {kind.upper()} image', 1)}") from None
    if kind == "npy":
        return read_npy(data, where)
    if kind == "raw":
        if len(data) != int(np.prod(shape)):
            raise DataError(f"{where}: holds {len(data)} bytes; raw pixels shaped {shape} need {int(np.prod(shape))}")
        return np.frombuffer(data, dtype=np.uint8)
    if looks_pickled(data):
        if not unsafe_pickle:
            raise DataError(f"{where} {_PICKLE_REFUSED}")
        return np.asarray(pickle.loads(data))  # noqa: S301 - the definition opted in with unsafe_pickle=True
    raise DataError(
        f"{where}: {len(data)} bytes in no known image format; expected PNG, JPEG, BMP, .npy, or "
        f"{int(np.prod(shape))} raw pixel bytes for shape {shape}"
    )


def read_npy(data: bytes, where: str) -> np.ndarray:
    """A `.npy` array from stored bytes, with `allow_pickle=False`.

    Raises:
        DataError: `where` and why: object arrays are refused; a damaged header or body (NumPy raises ValueError,
            SyntaxError or tokenize errors from parsing the header, EOFError or OSError for a short body).
    """
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(f"{where}: {OBJECT_ARRAYS_REFUSED}") from None
        raise DataError(f"{where}: cannot read the .npy array ({one_line(error)})") from None
    except Exception as error:  # the header is parsed as a Python literal: any failure is damage
        damage = type(error).__name__
        raise DataError(f"{where}: cannot read the .npy array (a damaged header or body: {damage})") from None


def conform(pixels: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """`pixels` reshaped to `shape` when they hold the same values ((H, W) vs (H, W, 1), or flat raw bytes)."""
    if (
        pixels.shape != shape
        and pixels.size == int(np.prod(shape))
        and (pixels.ndim == 1 or _squeezed(pixels.shape) == _squeezed(shape))
    ):
        pixels = pixels.reshape(shape)
    if pixels.shape != shape:
        raise DataError(f"{where}: image is shaped {pixels.shape}; the source declares {shape}")
    if pixels.dtype != np.uint8:
        if not np.issubdtype(pixels.dtype, np.number) or not np.isfinite(pixels).all():
            raise DataError(f"{where}: pixels of dtype {pixels.dtype} are not finite numbers")
        if pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{where}: pixels range {pixels.min()}..{pixels.max()}, outside 0..255")
        pixels = pixels.astype(np.uint8)
    return pixels


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:-1] if len(shape) == 3 and shape[-1] == 1 else shape


def warn_unsafe_pickle(where: str) -> None:
    """Logged once per load when a definition allows pickled cells, so the risk stays visible in build logs."""
    log.warning("%s: unsafe_pickle=True: pickled cells will be unpickled, which can run arbitrary code", where)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of uint8 pixels shaped (H, W), (H, W, 1) or (H, W, 3)."""
    from PIL import Image

    array = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_npy(pixels: np.ndarray) -> bytes:
    """`.npy` bytes of the array (readable with allow_pickle=False)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
    return buffer.getvalue()
