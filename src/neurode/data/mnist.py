"""MNIST from the four standard IDX files.

The files are looked for, in order, in

1. the ``data_dir`` argument,
2. the directory named by the environment variable ``NEURODE_MNIST_DIR``,
3. ``../shared/data/mnist`` relative to the current directory, when it exists,
4. the user cache ``~/.cache/neurode/mnist``.

Every file is checked against its published SHA-256 before it is read. A file
that is missing is downloaded from the standard mirrors (when ``download`` is
true and the network answers), verified, and only then moved into place, so
an interrupted download never leaves a truncated file behind.

An IDX file is a big-endian header — a magic number (2051 for images, 2049 for
labels), then one 32-bit size per dimension — followed by the raw ``uint8``
data in row-major order.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import NeurodeInputError

__all__ = [
    "MNIST",
    "MNISTChecksumError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "default_mnist_dir",
    "ensure_mnist_files",
    "load_mnist",
    "mnist_loader",
    "normalize_mnist",
    "random_crop",
    "read_idx",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: File name and published SHA-256 for each part of the data set.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": (
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_SPLITS = ("train", "test")


class MNISTNotFoundError(NeurodeInputError, FileNotFoundError):
    """MNIST files are missing from the data directory and could not be downloaded."""


class MNISTChecksumError(NeurodeInputError):
    """An MNIST file does not have its published SHA-256 (corrupted or truncated)."""


class MNISTFormatError(NeurodeInputError):
    """An MNIST file is not a well-formed IDX file."""


def default_mnist_dir() -> Path:
    """The directory MNIST is read from when no ``data_dir`` is given (see module docs)."""
    from_env = os.environ.get("NEURODE_MNIST_DIR")
    if from_env:
        return Path(from_env).expanduser()
    shared = Path.cwd().parent / "shared" / "data" / "mnist"
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "neurode" / "mnist"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected_sha256: str) -> None:
    actual = _sha256(path)
    if actual != expected_sha256:
        raise MNISTChecksumError(
            f"{path} has SHA-256 {actual}, expected {expected_sha256}; "
            "the file is corrupted or truncated: delete it and download it again"
        )


def _download(
    file_name: str, expected_sha256: str, directory: Path, mirrors: Sequence[str], timeout: float
) -> Path | None:
    """Fetch one file from the first mirror that serves the right bytes, written atomically."""
    target = directory / file_name
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file_name
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{file_name}.")
        try:
            with (
                os.fdopen(descriptor, "wb") as handle,
                urllib.request.urlopen(url, timeout=timeout) as response,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
            if _sha256(Path(temporary)) != expected_sha256:
                continue
            os.replace(temporary, target)
            return target
        except (OSError, ValueError, http.client.HTTPException):  # URLError is an OSError
            continue
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    return None


def ensure_mnist_files(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 30.0,
    parts: Sequence[str] = tuple(MNIST_FILES),
) -> dict[str, Path]:
    """Return the paths of verified MNIST files, downloading missing ones.

    ``parts`` names the files wanted (keys of :data:`MNIST_FILES`; all four by
    default).

    Raises :class:`MNISTChecksumError` when a present file has the wrong
    SHA-256, and :class:`MNISTNotFoundError` (a ``FileNotFoundError``) naming
    the directory and the missing files when they can be neither found nor
    downloaded.
    """
    directory = Path(data_dir).expanduser() if data_dir is not None else default_mnist_dir()
    if directory.exists() and not directory.is_dir():
        raise MNISTNotFoundError(f"MNIST data directory {directory} is not a directory")
    unknown = [part for part in parts if part not in MNIST_FILES]
    if unknown:
        raise NeurodeInputError(f"unknown MNIST parts {unknown}; known: {list(MNIST_FILES)}")
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for part in parts:
        file_name, sha256 = MNIST_FILES[part]
        path = directory / file_name
        if path.is_file():
            _verify(path, sha256)
            paths[part] = path
        else:
            missing.append(part)
    if missing and download:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        else:
            for part in list(missing):
                file_name, sha256 = MNIST_FILES[part]
                fetched = _download(file_name, sha256, directory, mirrors, timeout)
                if fetched is not None:
                    paths[part] = fetched
                    missing.remove(part)
    if missing:
        names = ", ".join(MNIST_FILES[part][0] for part in missing)
        how = (
            "download failed (no network or no writable directory)"
            if download
            else "download is disabled"
        )
        raise MNISTNotFoundError(
            f"MNIST data directory {directory} lacks {names}; {how}. Put the four IDX .gz "
            "files there, or point --data-dir / NEURODE_MNIST_DIR at a folder that has them"
        )
    return paths


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> torch.Tensor:
    """Read a gzip-compressed IDX file of unsigned bytes into a ``uint8`` tensor."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4:
        raise MNISTFormatError(f"{path} is too short to be an IDX file")
    magic = struct.unpack(">i", raw[:4])[0]
    if expected_magic is not None and magic != expected_magic:
        raise MNISTFormatError(f"{path} has IDX magic number {magic}, expected {expected_magic}")
    if magic >> 8 != 0x08:
        raise MNISTFormatError(f"{path} does not hold unsigned bytes (IDX magic {magic})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    count = 1
    for size in shape:
        count *= size
    if len(raw) - header != count:
        raise MNISTFormatError(
            f"{path} holds {len(raw) - header} bytes of data, its header says {count}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` of one split, both ``uint8``.

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
    """
    if split not in _SPLITS:
        raise NeurodeInputError(f"split must be 'train' or 'test', got {split!r}")
    paths = ensure_mnist_files(
        data_dir, download=download, parts=(f"{split}_images", f"{split}_labels")
    )
    images = read_idx(paths[f"{split}_images"], _IMAGES_MAGIC)
    labels = read_idx(paths[f"{split}_labels"], _LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise MNISTFormatError(
            f"MNIST {split} images {tuple(images.shape)} and labels {tuple(labels.shape)} "
            "do not match"
        )
    return images, labels


def random_crop(images: torch.Tensor, padding: int = 2, generator=None) -> torch.Tensor:
    """Shift each image by up to ``padding`` pixels: zero-pad, then crop at a random offset.

    ``images`` is ``(..., H, W)``; each leading index gets its own offset, drawn
    uniformly from ``{0, ..., 2 * padding}`` in each direction.
    """
    if padding == 0:
        return images
    *lead, height, width = images.shape
    flat = images.reshape(-1, height, width)
    padded = F.pad(flat, (padding, padding, padding, padding))
    n = flat.shape[0]
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.reshape(*lead, height, width)


def normalize_mnist(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels to float, standardised with the training-set mean and std."""
    return (images.float() / 255.0 - MNIST_MEAN) / MNIST_STD


class MNIST(Dataset):
    """One MNIST split as ``(image, label)`` pairs: a ``(1, 28, 28)`` float image, an int label.

    ``subset`` keeps the first ``subset`` images (the original order is
    class-balanced to within a few percent). ``augment`` shifts each image by
    up to two pixels (:func:`random_crop`) each time it is drawn.
    """

    def __init__(
        self,
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
        *,
        subset: int | None = None,
        augment: bool = False,
        download: bool = True,
    ):
        images, labels = load_mnist(split, data_dir, download=download)
        if subset is not None:
            if not isinstance(subset, int) or subset < 1:
                raise NeurodeInputError(f"subset must be a positive integer, got {subset!r}")
            images, labels = images[:subset], labels[:subset]
        self.split = split
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            image = random_crop(image)
        return normalize_mnist(image).unsqueeze(0), int(self.labels[index])


def mnist_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: Sampler | None = None,
    shuffle: bool = False,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over an :class:`MNIST` dataset."""
    if batch_size < 1:
        raise NeurodeInputError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise NeurodeInputError(f"num_workers must be >= 0, got {num_workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
