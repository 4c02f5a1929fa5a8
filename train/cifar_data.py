"""CIFAR-10 in memory: readers for the usual layouts, a decode cache, and batch preparation.

Every reader returns the whole split as uint8 tensors in NHWC order ((N, 32, 32, 3)), so that a
batch sliced from it and permuted to NCHW is already channels_last, the layout the CPU
convolutions are fastest in.
"""
import functools
import hashlib
import io
import os
import pickle
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
# Per-channel statistics of the CIFAR-10 training images, for input normalisation.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PICKLE_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PICKLE_TEST = "test_batch"
PICKLE_FILES = PICKLE_TRAIN + (PICKLE_TEST,)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CACHE_VERSION = 2
# Where the decode cache goes when the data's own folder is read-only (git-ignored).
REPO_CACHE_DIR = Path(__file__).resolve().parent.parent / "data" / "cache"
HINT = ("pass --data with a folder holding cifar-10-batches-py, an image folder "
        "(train/<class>/*, test/<class>/*), or a .tar/.tar.gz/.tar.xz archive of either, e.g. "
        "--data ../shared/data/cifar10-jpeg.tar.xz")


class DatasetError(Exception):
    """The dataset is missing, unreadable or not CIFAR-10; the message says what and how to fix."""


@dataclass
class Split:
    images: torch.Tensor  # (N, 32, 32, 3) uint8, NHWC
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


# ----------------------------------------------------------------------------- decoding
def _decode_pickle_batches(read: Callable[[str], bytes], names: Iterable[str]) -> Split:
    images, labels = [], []
    for name in names:
        try:
            batch = pickle.loads(read(name), encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(batch["labels"], dtype=np.int64)
        except Exception as e:  # any unpickling or shape problem means a corrupt batch file
            raise DatasetError(f"{name} is not a CIFAR-10 batch file ({e})") from None
        if len(batch_labels) != len(data):
            raise DatasetError(f"{name} has {len(data)} images but {len(batch_labels)} labels")
        images.append(data.transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return Split(torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
                 torch.from_numpy(np.concatenate(labels)))


def _decode_images(files: List[Tuple[int, str]], read: Callable[[str], bytes]) -> Split:
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for i, (_, name) in enumerate(files):
        try:
            with Image.open(io.BytesIO(read(name))) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DatasetError(f"cannot decode image {name} ({e})") from None
        if pixels.shape != (32, 32, 3):
            raise DatasetError(f"image {name} is {pixels.shape[1]}x{pixels.shape[0]}, "
                               f"CIFAR-10 images are 32x32")
        images[i] = pixels
    labels = torch.tensor([label for label, _ in files], dtype=torch.int64)
    return Split(torch.from_numpy(images), labels)


_IMAGE_FOLDER_ENTRY = re.compile(r"^(?P<root>(?:.*/)?)(?P<split>train|test)/(?P<cls>[^/]+)/[^/]+$")


def _image_folder_files(paths: Iterable[str]) -> Dict[str, List[Tuple[int, str]]]:
    """Group image paths of an image-folder layout into {"train": [(label, path)], "test": ...}."""
    by_split: Dict[str, Dict[str, List[str]]] = {"train": {}, "test": {}}
    roots = set()
    for path in paths:
        match = _IMAGE_FOLDER_ENTRY.match(path)
        if match and path.lower().endswith(IMAGE_SUFFIXES):
            roots.add(match["root"])
            by_split[match["split"]].setdefault(match["cls"], []).append(path)
    if len(roots) > 1:
        raise DatasetError(f"found more than one train/test image folder: {sorted(roots)}")
    classes = tuple(sorted(by_split["train"]))
    if not classes or not by_split["test"]:
        raise DatasetError("no train/<class>/ and test/<class>/ images found")
    if tuple(sorted(by_split["test"])) != classes:
        raise DatasetError(f"train and test have different classes: {classes} vs "
                           f"{tuple(sorted(by_split['test']))}")
    if len(classes) != len(CLASSES):
        raise DatasetError(f"expected the 10 CIFAR-10 classes, found {len(classes)}: {classes}")
    # Classes take turns (one image of each, then the next of each, ...), so that any prefix,
    # such as --limit-train's, is class-balanced; the pickled batches are shuffled already.
    return {split: [(label, path) for _, label, path in sorted(
        (i, label, path) for label, cls in enumerate(classes)
        for i, path in enumerate(sorted(by_split[split][cls])))]
        for split in by_split}


def _pickle_dir(root: Path) -> Optional[Path]:
    return next((d for d in (root, root / "cifar-10-batches-py")
                 if (d / PICKLE_TRAIN[0]).is_file()), None)


def _holds_dataset(root: Path) -> bool:
    """Whether folder ``root`` looks like one of the layouts (the readers check the details)."""
    return root.is_dir() and (_pickle_dir(root) is not None or any(
        d.name == "train" and d.is_dir() for d in root.rglob("train")))


def _read_directory(root: Path) -> Tuple[Split, Split]:
    pickle_dir = _pickle_dir(root)
    if pickle_dir is not None:
        missing = [n for n in PICKLE_FILES if not (pickle_dir / n).is_file()]
        if missing:
            raise DatasetError(f"{pickle_dir} lacks {', '.join(missing)}")
        read = lambda name: (pickle_dir / name).read_bytes()  # noqa: E731
        return (_decode_pickle_batches(read, PICKLE_TRAIN),
                _decode_pickle_batches(read, [PICKLE_TEST]))
    paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    files = _image_folder_files(paths)
    read = lambda name: (root / name).read_bytes()  # noqa: E731
    return _decode_images(files["train"], read), _decode_images(files["test"], read)


def _read_archive(path: Path) -> Tuple[Split, Split]:
    # One sequential pass: compressed tars cannot seek, so keep the wanted members' bytes.
    contents: Dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and (os.path.basename(member.name) in PICKLE_FILES
                                        or member.name.lower().endswith(IMAGE_SUFFIXES)):
                    contents[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"cannot read the archive {path} ({e})") from None
    pickles = {os.path.basename(n): n for n in contents
               if os.path.basename(n) in PICKLE_FILES}
    if PICKLE_TRAIN[0] in pickles:
        missing = [n for n in PICKLE_FILES if n not in pickles]
        if missing:
            raise DatasetError(f"{path} lacks {', '.join(missing)}")
        read = lambda name: contents[pickles[name]]  # noqa: E731
        return (_decode_pickle_batches(read, PICKLE_TRAIN),
                _decode_pickle_batches(read, [PICKLE_TEST]))
    try:
        files = _image_folder_files(contents)
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from None
    return _decode_images(files["train"], contents.get), _decode_images(files["test"], contents.get)


# ----------------------------------------------------------------------------- cache
def _writable(folder: Path) -> bool:
    # The mode bits count even for root, who could write anyway: a folder marked read-only
    # (a shared data folder) is left alone.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _cache_path(source: Path, cache_dir: Optional[Path]) -> Optional[Path]:
    """A cache file named after the source's path, size and mtime, in the first writable place:
    ``cache_dir``, the source's own folder, or the repository's git-ignored ``data/cache``."""
    stat = source.stat()
    key = f"{CACHE_VERSION}:{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    name = f"{source.name}.{hashlib.sha256(key.encode()).hexdigest()[:12]}.uint8.npz"
    for folder in ([cache_dir] if cache_dir else [source.parent, REPO_CACHE_DIR]):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if (folder / name).is_file() or _writable(folder):
            return folder / name
    return None


def _load_cache(path: Path) -> Optional[Tuple[Split, Split]]:
    try:
        with np.load(path) as arrays:
            return tuple(Split(torch.from_numpy(arrays[f"{s}_images"]),
                               torch.from_numpy(arrays[f"{s}_labels"])) for s in ("train", "test"))
    except Exception:  # a truncated or foreign cache file is simply rebuilt
        return None


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _save_cache(path: Path, train: Split, test: Split) -> None:
    try:
        atomic_write(path, lambda f: np.savez(
            f, train_images=train.images.numpy(), train_labels=train.labels.numpy(),
            test_images=test.images.numpy(), test_labels=test.labels.numpy()))
    except OSError:  # a cache is an optimisation: never fail the run over it
        pass


# ----------------------------------------------------------------------------- entry point
def _try_download(root: Path) -> None:
    try:
        import torchvision
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # no internet, no torchvision, a broken download: all end the same way
        raise DatasetError(f"no CIFAR-10 at {root} and the torchvision download failed "
                           f"({type(e).__name__}: {e}); {HINT}") from None


def load_cifar10(path, cache_dir: Optional[Path] = None, download: bool = True,
                 log: Callable[[str], None] = print) -> Tuple[Split, Split]:
    """Read CIFAR-10 from ``path`` (see ``HINT`` for the layouts) as (train, test) uint8 splits.

    Archives and image folders are decoded once and cached; a folder with no dataset is filled by
    the torchvision download when ``download`` is set.
    """
    path = Path(path).expanduser()
    if path.is_file() or is_archive(path):
        if not path.is_file():
            raise DatasetError(f"no dataset at {path}; {HINT}")
        if not is_archive(path):
            raise DatasetError(f"{path} is neither a folder nor a .tar/.tar.gz/.tar.xz archive; "
                               f"{HINT}")
    elif not _holds_dataset(path):
        if not download:
            raise DatasetError(f"no CIFAR-10 found in {path}; {HINT}")
        log(f"no CIFAR-10 found in {path}; trying the torchvision download")
        _try_download(path)

    # Pickled batches are already uint8 arrays: only decoded images are worth a cache.
    cache = None if path.is_dir() and _pickle_dir(path) else _cache_path(path, cache_dir)
    if cache is not None and cache.is_file():
        splits = _load_cache(cache)
        if splits is not None:
            log(f"loaded decoded CIFAR-10 from {cache}")
            return splits
    log(f"decoding {path} (once; cached to {cache})" if cache else f"reading {path}")
    try:
        train, test = _read_archive(path) if path.is_file() else _read_directory(path)
    except DatasetError as e:
        raise DatasetError(f"{e}; {HINT}") from None
    if not (train.labels.min() >= 0 and max(train.labels.max(), test.labels.max()) < len(CLASSES)):
        raise DatasetError(f"{path} has labels outside 0..9; {HINT}")
    if cache is not None:
        _save_cache(cache, train, test)
    return train, test


# ----------------------------------------------------------------------------- batches
@functools.lru_cache
def _normalization(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    # Per-pixel (H, W, C) copies of the per-channel constants: broadcasting these over NHWC
    # batches runs along contiguous rows (6x faster than broadcasting over the 3 channels).
    scale = 1 / (255 * torch.tensor(STD, device=device))
    shift = -255 * torch.tensor(MEAN, device=device) * scale
    return scale.repeat(32, 32, 1), shift.repeat(32, 32, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images -> normalised float32 NCHW (channels_last) network input."""
    scale, shift = _normalization(images.device)
    return images.float().mul_(scale).add_(shift).permute(0, 3, 1, 2)


def flip_first_half(images: torch.Tensor) -> torch.Tensor:
    """Mirror the first half of a uint8 NHWC batch left-right, in place.

    Batches come from a fresh shuffle every epoch, so each image is flipped with probability 1/2
    per epoch, independently of other epochs; one slice op instead of a per-image choice.
    """
    half = len(images) // 2
    images[:half] = images[:half].flip(2)
    return images
