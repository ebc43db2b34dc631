"""Decoded-image cache: each image file is decoded and resized once per machine, then memory-mapped.

Why. A study is hundreds of short runs over the same few thousand images, and every run decodes
every JPEG again in every epoch: the decode is about half of a training sample's CPU cost, decode
and resize two thirds of an evaluation sample's (bench/README.md, "Decoded-image cache"). Here the
decoded pixels of one split are written once into a uint8 file that every trial, DataLoader worker
and epoch on the machine maps read-only; the OS page cache holds one copy for all of them. Random
crops, flips, RandAugment, random erasing and mixup still run per sample and epoch, on the cached
image: nothing random is baked in.

What is cached, and the resize rule. The images of an `ImageFiles` source, decoded by its own `load`
(RGB, banner crop), then shrunk by the evaluation transform's own first op: timm's shorter-side
`Resize(S)` with `S = floor(img_size / crop_pct)` (341 px for Inception-v4 at 299 px) and the model's
interpolation. An image whose shorter side is <= S is stored as decoded: never upscaled. What that
does to pixels:

- Evaluation is pixel-exact. A stored image is already that op's output, and torchvision's Resize
  returns an image that has the requested size unchanged, so Resize -> CenterCrop -> ToTensor ->
  Normalize give the same tensor bit for bit (tests/trainer/test_image_cache.py). S is the only
  shrunk size with this property: a larger S would make evaluation resample twice, a smaller one
  upscale. (Full-size images would keep training exact too, at 1.4x the memory for 640 x 427 photos
  and more for the larger photos of FGVC-Aircraft or Stanford Cars.)
- Training: timm's RandomResizedCrop draws its box (area fraction in `crop_scale`, aspect ratio
  3/4..4/3) on the image it is given. For an image stored as decoded nothing changes. For a larger
  one the box has the same relative geometry (up to 1-px rounding), but it is cut from the S-px copy
  and resampled a second time: crops smaller than (img_size / S)^2 of the image (77% at 299 / 341)
  are enlarged from fewer source pixels than before, so they are softer. Measured by bench/cache.py
  on photos (bench/README.md, 2026-11-29), mean |difference| in 0..255 levels of a crop resized to
  299 px, cached vs original: 4.0 for 8% of the area, 2.1 for 50%, 1.3 for the whole image; resizing
  the same crops bilinear instead of bicubic changes them by 2.1, 1.6 and 1.4. And because Python's
  `random.randint` draws a number of bits that depends on its range, the first such image changes the
  rest of the run's augmentation draws: a run with the cache is another draw of the same augmentation
  with the same seed, not the same sequence. Runs whose training images are no larger than S are
  identical with and without the cache (tested); `image_cache: false` (`--no-image-cache`) opts out.

Store. One file per key, `images.u8`: a 4 KiB header (JSON: format, fingerprint, count, offsets),
the images' H x W x 3 uint8 pixels back to back, then the index, `count x 3` int64 (offset, height,
width). One file, so that data and index are replaced together by one `os.replace`. Variable-size
images keep each aspect ratio (fixed-size slots would crop or pad and waste space).

Where. `$NBTL_IMAGE_CACHE_DIR`, else `~/.cache/nbtl-search/images/`; one folder per
`<dataset>-<split>-<S>px-<interpolation>-<hash of the source's path list>`. The hash keeps two data
folders (or two `val_fraction`s) of one dataset from evicting each other; a changed file list thus
gets a new folder, and the old one stays until deleted by hand. It should be a local disk: `flock`
over NFS is not reliable.

Invalidation. The header's fingerprint hashes, in source order (row i is image i), every file's path,
size and mtime (ns), the banner crop, the resize op, the format version and the Pillow and torchvision
versions (decoders and resamplers may change pixels). Any mismatch rebuilds the file. It is stat-only
(one stat per file per run, milliseconds per thousand files): a file rewritten with the same size and
the same mtime is not noticed.

Concurrency. Readers only ever open `images.u8`, which only ever appears by `os.replace` of a
complete, fsynced temporary file from the same folder: a reader sees the old cache or the new one,
never half of one, and a reader that mapped the old file keeps reading it (the inode lives on). A
builder holds an exclusive `flock` on `lock` in the folder; a second process that found no valid
cache waits for it, then finds the first one's cache and uses it. A builder killed mid-build leaves a
`.tmp-*` file, which the next builder removes (under the lock nobody else writes there). POSIX only.

Disk. Before building, the image headers give the cache's size; one that would not fit in the free
space (keeping `FREE_MARGIN` of it free) is skipped with a warning and the run reads the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torchvision
from PIL import Image
from torchvision import transforms

from ..config import TrainConfig
from .base import ImageFiles, ImageSource, Splits

FORMAT = 1  # bump when the file layout or the decode/resize code changes: every cache rebuilds
MAGIC = b"NBTLIMG\n"
HEADER_BYTES = 4096  # pixels start here (page-aligned)
DATA_FILE = "images.u8"
LOCK_FILE = "lock"
TMP_PREFIX = ".tmp-"
FREE_MARGIN = 0.1  # never fill more than 90% of the free space with a cache
ENV_DIR = "NBTL_IMAGE_CACHE_DIR"

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """`$NBTL_IMAGE_CACHE_DIR`, else `~/.cache/nbtl-search/images`."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nbtl-search" / "images"


def shrink_op(eval_transform: Any) -> transforms.Resize | None:
    """The eval transform's first op when it is a plain shorter-side Resize (timm's `crop_mode`
    "center", square input), else None: then no size keeps evaluation exact, and nothing is cached."""
    ops = getattr(eval_transform, "transforms", None)
    first = ops[0] if ops else None
    if not isinstance(first, transforms.Resize) or first.max_size is not None:
        return None
    if isinstance(first.size, int) or len(first.size) == 1:
        return first
    return None


def _short_side(resize: transforms.Resize) -> int:
    return resize.size if isinstance(resize.size, int) else resize.size[0]


def _shrunk_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) after the cache's rule: torchvision's shorter-side arithmetic, never upscaling."""
    if min(width, height) <= short:
        return width, height
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


@dataclasses.dataclass(frozen=True)
class _Store:
    path: Path
    fingerprint: str
    index: np.ndarray  # count x 3 int64: offset into pixels, height, width
    pixels: np.ndarray  # flat uint8 view of the mapped file


class CachedImages(ImageSource):
    """An `ImageFiles` source served from its decoded-image cache (see the module docstring).

    `built` says whether this process decoded the images (True) or found them cached (False)."""

    def __init__(self, files: ImageFiles, store: _Store, built: bool) -> None:
        self.files = files
        self.labels = files.labels
        self.path = store.path
        self.fingerprint = store.fingerprint
        self.built = built
        self._store: _Store | None = store

    def load(self, index: int) -> Image.Image:
        store = self._store or self._reopen()
        offset, height, width = (int(v) for v in store.index[index])
        pixels = store.pixels[offset : offset + height * width * 3].reshape(height, width, 3)
        return Image.fromarray(pixels)  # copies: PIL keeps RGB in its own 4-byte layout

    def _reopen(self) -> _Store:
        # After unpickling (a spawned DataLoader worker): map the file again, and refuse a cache that
        # was rebuilt in between rather than serve other pixels under the same indices.
        store = _open_valid(self.path, self.fingerprint)
        if store is None:
            raise RuntimeError(
                f"image cache {self.path} changed or vanished while a run was using it"
            )
        self._store = store
        return store

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}  # pickling the mapping would copy the whole cache


def cached_images(
    files: ImageFiles, name: str, resize: transforms.Resize, root: Path | None = None
) -> CachedImages | None:
    """`files` served from the cache `root/<name>-<S>px-...`, built first if missing or stale.

    None when the cache would not fit on the disk (a warning says so): read the files instead."""
    folder = (root or cache_root()) / _folder_name(files, name, resize)
    path = folder / DATA_FILE
    fingerprint = _fingerprint(files, resize)
    store = _open_valid(path, fingerprint)
    if store is not None:
        return CachedImages(files, store, built=False)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        store = _open_valid(path, fingerprint)  # another process may have built it while we waited
        if store is not None:
            return CachedImages(files, store, built=False)
        for stale in folder.glob(TMP_PREFIX + "*"):  # left by a builder that died; we hold the lock
            stale.unlink(missing_ok=True)
        if not _fits(files, resize, folder):
            return None
        _build(files, resize, path, fingerprint)
        store = _open_valid(path, fingerprint)  # still under the lock: nobody can replace it yet
    if store is None:
        raise RuntimeError(f"image cache {path} fails its own checks right after it was built")
    return CachedImages(files, store, built=True)


def cache_splits(splits: Splits, cfg: TrainConfig, eval_transform: Any) -> Splits:
    """The file-based splits a run will read, served from the decoded-image cache.

    The test split only when the run evaluates it (a search never does, and it can be the largest);
    generated sets (`ImageArray`) are in memory already and stay as they are."""
    resize = shrink_op(eval_transform)
    if resize is None:
        log.info("image cache off: the eval transform does not start with a shorter-side resize")
        return splits
    names = ("train", "val", "test") if cfg.eval_test else ("train", "val")
    cached = {}
    for split in names:
        source = getattr(splits, split)
        if isinstance(source, ImageFiles) and len(source):
            cached[split] = cached_images(source, f"{cfg.dataset}-{split}", resize) or source
    return dataclasses.replace(splits, **cached)


# --- keys, fingerprints, the file ----------------------------------------------------------------


def _resize_key(resize: transforms.Resize) -> str:
    return f"{_short_side(resize)}px-{resize.interpolation.value}"


def _folder_name(files: ImageFiles, name: str, resize: transforms.Resize) -> str:
    paths = hashlib.sha256("\n".join(os.path.abspath(p) for p in files.paths).encode())
    paths.update(f"\ncrop_bottom={files.crop_bottom}".encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return f"{safe}-{_resize_key(resize)}-{paths.hexdigest()[:12]}"


def _fingerprint(files: ImageFiles, resize: transforms.Resize) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "format": FORMAT,
                "pillow": PIL.__version__,
                "torchvision": torchvision.__version__,
                "resize": [_short_side(resize), resize.interpolation.value, resize.max_size],
                "crop_bottom": files.crop_bottom,
            },
            sort_keys=True,
        ).encode()
    )
    for p in files.paths:
        st = os.stat(p)
        h.update(f"\n{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _open_valid(path: Path, fingerprint: str) -> _Store | None:
    """The mapped cache at `path` if it is complete and has `fingerprint`, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:  # header and mapping come from the same open file, whatever replaces `path` meanwhile
        header = _parse_header(os.pread(fd, HEADER_BYTES, 0))
        size = os.fstat(fd).st_size
        if (
            header is None
            or header.get("fingerprint") != fingerprint
            or header.get("file_bytes") != size
        ):
            return None
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    count, data_bytes = header["count"], header["data_bytes"]
    index = np.frombuffer(mapped, np.int64, count=3 * count, offset=header["index_offset"]).reshape(
        count, 3
    )
    ends = index[:, 0] + index[:, 1] * index[:, 2] * 3
    if count and (index[0, 0] != 0 or ends[-1] != data_bytes or (ends[:-1] != index[1:, 0]).any()):
        return None
    pixels = np.frombuffer(mapped, np.uint8, count=data_bytes, offset=HEADER_BYTES)
    return _Store(path, fingerprint, index, pixels)


def _parse_header(raw: bytes) -> dict[str, Any] | None:
    if not raw.startswith(MAGIC):
        return None
    try:
        header = json.loads(raw[len(MAGIC) :].rstrip(b"\0"))
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return None
    return header


def _decoded(files: ImageFiles, index: int, resize: transforms.Resize) -> np.ndarray:
    path = files.paths[index]
    try:
        img = files.load(index)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f"image cache: cannot decode {path}: {e}") from e
    if min(img.size) > _short_side(resize):
        img = resize(img)  # the eval transform's own op: evaluation then needs no second resample
    return np.asarray(img, dtype=np.uint8)


def _fits(files: ImageFiles, resize: transforms.Resize, folder: Path) -> bool:
    short, needed = _short_side(resize), 0
    for p in files.paths:
        try:
            with Image.open(p) as im:  # reads the header only
                width, height = im.size
        except (OSError, ValueError) as e:
            raise OSError(f"image cache: cannot read {p}: {e}") from e
        width, height = _shrunk_size(width, max(height - files.crop_bottom, 1), short)
        needed += width * height * 3
    free = shutil.disk_usage(folder).free
    if needed > (1 - FREE_MARGIN) * free:
        warnings.warn(
            f"image cache skipped: {folder} needs {needed / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB free; reading the image files instead",
            stacklevel=3,
        )
        return False
    return True


def _build(files: ImageFiles, resize: transforms.Resize, path: Path, fingerprint: str) -> None:
    """Decode every image into a temporary file next to `path`, then replace `path` with it."""
    started = time.perf_counter()
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(
                f.fileno(), 0o644
            )  # mkstemp's 0600 would hide a shared cache folder from others
            f.write(bytes(HEADER_BYTES))
            index = np.zeros((len(files), 3), np.int64)
            offset = 0
            for i in range(len(files)):
                pixels = _decoded(files, i, resize)
                f.write(pixels.tobytes())
                index[i] = (offset, pixels.shape[0], pixels.shape[1])
                offset += pixels.nbytes
            index_offset = HEADER_BYTES + offset + (-offset % 8)
            f.write(bytes(index_offset - HEADER_BYTES - offset))
            f.write(index.tobytes())
            header = {
                "format": FORMAT,
                "fingerprint": fingerprint,
                "count": len(files),
                "data_bytes": offset,
                "index_offset": index_offset,
                "file_bytes": index_offset + index.nbytes,
                "resize": _resize_key(resize),
            }
            raw = MAGIC + json.dumps(header).encode()
            if len(raw) > HEADER_BYTES:
                raise ValueError(f"image cache header of {len(raw)} bytes exceeds {HEADER_BYTES}")
            f.seek(0)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)
    log.info(
        "image cache: %d images decoded into %s (%.1f MB) in %.1f s",
        len(files),
        path,
        header["file_bytes"] / 1e6,
        time.perf_counter() - started,
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's exclusive build lock (released by the kernel if the process dies)."""
    with open(folder / LOCK_FILE, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
