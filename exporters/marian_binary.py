"""Read Marian's binary model format (``model.*.bin``), the format of Bergamot's models.

Layout, as read from the files themselves (all integers little-endian uint64 unless said):

- ``version`` (1) and ``count``, the number of items;
- ``count`` headers of four values: name length (with its NUL), type code, number of shape
  dimensions, data length in bytes (padded to a multiple of 256);
- the names, NUL-terminated, one after the other; then every shape as int32 dimensions;
- a uint64 padding length and that many bytes, so that the data starts 256-aligned;
- each item's data in header order.

Type codes: ``0x404`` float32, ``0x101`` int8 (used for the ``special:model.yml`` text), and
``0x4101`` intgemm8: an int8 matrix followed by one float32, the quantization multiplier; the
value is ``int8 / multiplier``. A weight that multiplies activations from the right (``x W``,
header shape ``[in, out]``) is stored transposed, ``[out, in]`` row-major, the layout intgemm
multiplies with; the embedding matrix ``Wemb`` (``[vocab, dim]``), which the tied output layer
uses as ``x Wemb^T``, is already in that layout and stored as its header says. (Found by
rebuilding the model both ways: only this reading translates.) The ``*_QuantMultA`` items
are the activation multipliers of Marian's int8 kernels; a float rebuild does not need them.

numpy only: no torch here, so `cnmt export` can tell a bad file from a missing tool.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnmt.errors import ConfigError

BINARY_VERSION = 1
FLOAT32 = 0x404
INT8 = 0x101
INTGEMM8 = 0x4101
MODEL_YML = "special:model.yml"


@dataclass(frozen=True)
class MarianItem:
    """One named tensor of a Marian binary model, as stored."""

    name: str
    type_code: int
    shape: tuple[int, ...]
    data: bytes


def read_items(path: Path) -> dict[str, MarianItem]:
    """Every item of the Marian binary model at ``path``, by name."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the Marian model ({exc})") from None

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{path}: not a Marian binary model ({why}); reinstall its package")

    if len(blob) < 16:
        raise fail("file too short")
    version, count = struct.unpack_from("<QQ", blob, 0)
    if version != BINARY_VERSION:
        raise fail(f"binary format version {version}, this reader knows {BINARY_VERSION}")
    offset = 16
    if count == 0 or offset + 32 * count > len(blob):
        raise fail(f"header claims {count} items")
    headers = np.frombuffer(blob, dtype="<u8", count=4 * count, offset=offset).reshape(count, 4)
    offset += 32 * count
    names = []
    for length in headers[:, 0]:
        raw = blob[offset : offset + int(length)]
        if len(raw) != int(length) or not raw.endswith(b"\0"):
            raise fail("truncated item name")
        names.append(raw[:-1].decode("utf-8"))
        offset += int(length)
    shapes = []
    for dims in headers[:, 2]:
        shapes.append(
            tuple(int(d) for d in np.frombuffer(blob, dtype="<i4", count=int(dims), offset=offset))
        )
        offset += 4 * int(dims)
    (padding,) = struct.unpack_from("<Q", blob, offset)
    offset += 8 + int(padding)
    if offset + int(headers[:, 3].sum()) != len(blob):
        raise fail(f"data lengths do not add up to the file size ({len(blob)} bytes)")
    items = {}
    for name, shape, (_, type_code, _, length) in zip(names, shapes, headers, strict=True):
        items[name] = MarianItem(name, int(type_code), shape, blob[offset : offset + int(length)])
        offset += int(length)
    return items


def to_float(item: MarianItem, transposed: bool = True) -> np.ndarray:
    """The item as float32 of its header shape: float32 as is, intgemm8 dequantized (and
    transposed back when stored ``transposed``, every matrix but ``Wemb``)."""
    elements = int(np.prod(item.shape))
    if item.type_code == FLOAT32:
        return np.frombuffer(item.data, dtype="<f4", count=elements).reshape(item.shape).copy()
    if item.type_code == INTGEMM8:
        if len(item.shape) != 2:
            raise ConfigError(f"intgemm8 item {item.name!r} has shape {item.shape}, not a matrix")
        rows, cols = item.shape
        if len(item.data) < elements + 4:
            raise ConfigError(f"intgemm8 item {item.name!r} is truncated")
        quantized = np.frombuffer(item.data, dtype=np.int8, count=elements)
        matrix = quantized.reshape(cols, rows).T if transposed else quantized.reshape(rows, cols)
        (multiplier,) = struct.unpack_from("<f", item.data, elements)
        if not multiplier > 0:
            raise ConfigError(f"intgemm8 item {item.name!r}: quantization multiplier {multiplier}")
        return (matrix.astype(np.float32) / np.float32(multiplier)).copy()
    raise ConfigError(f"item {item.name!r} has type 0x{item.type_code:x}, not a weight type")


def model_yaml(items: dict[str, MarianItem]) -> dict[str, object]:
    """The training options Marian stores in the model (``special:model.yml``)."""
    import yaml

    item = items.get(MODEL_YML)
    if item is None:
        raise ConfigError("the Marian model has no special:model.yml item (its architecture)")
    text = item.data.split(b"\0", 1)[0].decode("utf-8")
    options = yaml.safe_load(text)
    if not isinstance(options, dict):
        raise ConfigError("special:model.yml of the Marian model is not a YAML mapping")
    return options


def float_weights(items: dict[str, MarianItem]) -> dict[str, np.ndarray]:
    """Every weight of the model as float32 of its header shape (activation multipliers and
    the options text left out)."""
    return {
        name: to_float(item, transposed=name != "Wemb")
        for name, item in items.items()
        if item.type_code in (FLOAT32, INTGEMM8) and not name.endswith("_QuantMultA")
    }
