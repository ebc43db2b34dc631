"""CPU benchmark of the decoded-image cache (trainer/data/cache.py), as ratios measured side by side.

    python bench/cache.py [--images N] [--rounds R] [--batches K] [--budget-s S]

On a tree of photo-sized JPEGs written to a temporary folder (crops of scikit-learn's two bundled
sample photos at their own resolution, 500..640 x 375..427 px, quality 90), with the shipped
studies' settings (Inception-v4's data config at 299 px: bicubic, crop_pct 0.875, so the cache keeps
shorter sides of 341 px):

- data-pipeline images/s of one process (a DataLoader with workers=0, batch 32, torch on 1 thread like
  a DataLoader worker), `ImageFiles` (decode every time) vs `CachedImages`, for (i) the plain train
  transform (random-resized crop + flip), (ii) the same with RandAugment `rand-m9-mstd0.5-inc1` and
  random erasing 0.5 (the searched maximum of studies/dtd.yaml), (iii) the eval transform. The six
  variants run interleaved in an order that rotates every round; each ratio is the median over rounds
  of the per-round speed-up `t_files / t_cache`, with its quartiles (the harness of bench/cpu.py).
- the one-off cost: images/s of building the cache, and its size per 1,000 images on disk (= in the
  page cache, shared by every process) next to the JPEGs' and the full-size decoded images'.
- what the cache does to pixels (not timing): evaluation tensors must be identical (exit code 1
  otherwise); for training, centre crops of 8/25/50/100% of the image area resized to 299 px
  (bicubic) from the cached copy vs from the original, as mean absolute difference in 0..255 levels,
  next to a yardstick: the same crop from the original resized bilinear instead of bicubic.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import timm
import timm.data
import torch
import torchvision
from cpu import Clock, emit, interleaved, measurement, paired
from PIL import Image
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from trainer.config import TrainConfig
from trainer.data import ImageFiles, TransformedDataset, build_transform
from trainer.data.cache import cached_images, shrink_op

MODEL, IMG, BATCH = "inception_v4", 299, 32
AA, REPROB = "rand-m9-mstd0.5-inc1", 0.5
CROP_AREAS = (0.08, 0.25, 0.5, 1.0)


def photo_tree(folder: Path, n: int, seed: int = 0) -> ImageFiles:
    """`n` JPEGs of 500..640 x 375..427 px (one in five portrait): crops of the two sample photos
    (640 x 427), flipped and brightened at random: the decode cost and the detail of photos."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 640 x 427 each
    samples = []
    for i in range(n):
        photo = photos[i % len(photos)]
        # a crop at the photo's own resolution: no resampling, so the detail is a camera's
        w, h = int(rng.integers(500, photo.width + 1)), int(rng.integers(375, photo.height + 1))
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        img = photo.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.2:
            img = img.transpose(Image.ROTATE_90)
        gain = float(rng.uniform(0.8, 1.2))
        img = Image.eval(img, lambda v, g=gain: min(255, int(v * g)))
        path = folder / f"c{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
        samples.append((str(path), i % 10))
    return ImageFiles(samples)


def cycling_batches(dataset: TransformedDataset, seed: int):
    """A function returning the next batch of a shuffling DataLoader (workers=0), forever."""
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,  # every call: 32
        generator=torch.Generator().manual_seed(seed),
    )
    state = {"it": iter(loader)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])

    return next_batch


def pixel_effect(files: ImageFiles, cached, eval_tf, count: int) -> dict:
    """Eval tensors cached vs files (must be equal); train-style crops cached vs files (0..255 MAD).

    The cached crop uses the original's box scaled exactly (PIL's float `box`): the comparison then
    shows the detail lost by resampling twice, not a sub-pixel shift of the box (RandomResizedCrop
    draws its box at random anyway). Yardsticks on the same crops: bilinear instead of bicubic, and
    saving the crop once more as a quality-90 JPEG."""
    eval_max = 0.0
    crops = {a: [] for a in CROP_AREAS}
    yardstick = {a: [] for a in CROP_AREAS}
    jpeg = {a: [] for a in CROP_AREAS}
    for i in range(count):
        original, small = files.load(i), cached.load(i)
        eval_max = max(eval_max, float((eval_tf(original) - eval_tf(small)).abs().max()))
        (w, h), (sw, sh) = original.size, small.size
        for area in CROP_AREAS:
            side = min(
                round((area * w * h) ** 0.5), w, h
            )  # a square box, as RandomResizedCrop's ratio 1
            top, left = (h - side) // 2, (w - side) // 2
            ref = F.resized_crop(
                original, top, left, side, side, [IMG, IMG], InterpolationMode.BICUBIC
            )
            bil = F.resized_crop(
                original, top, left, side, side, [IMG, IMG], InterpolationMode.BILINEAR
            )
            fx, fy = sw / w, sh / h  # the same box in the cached copy's pixels
            got = small.resize(
                (IMG, IMG),
                Image.BICUBIC,
                box=(left * fx, top * fy, (left + side) * fx, (top + side) * fy),
            )
            buf = io.BytesIO()
            ref.save(buf, "JPEG", quality=90)
            a = np.asarray(ref, dtype=np.int16)

            def mad(img: Image.Image, a: np.ndarray = a) -> float:
                return float(np.abs(np.asarray(img, dtype=np.int16) - a).mean())

            crops[area].append(mad(got))
            yardstick[area].append(mad(bil))
            jpeg[area].append(mad(Image.open(buf).convert("RGB")))

    def means(d: dict) -> dict:
        return {str(a): statistics.mean(v) for a, v in d.items()}

    return {
        "measure": "pixel_effect",
        "images": count,
        "eval_max_abs_diff": eval_max,
        "train_crop_mad": means(crops),
        "bilinear_vs_bicubic_mad": means(yardstick),
        "jpeg_q90_mad": means(jpeg),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=300, help="JPEGs in the generated tree")
    p.add_argument("--rounds", type=int, default=50, help="interleaved rounds")
    p.add_argument("--batches", type=int, default=1, help="batches of 32 per variant per round")
    p.add_argument("--check-images", type=int, default=60, help="images for the pixel comparison")
    p.add_argument("--budget-s", type=float, default=150.0, help="seconds for the timed rounds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker process runs with
    started = time.perf_counter()
    emit(
        {
            "measure": "environment",
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "pillow": PIL.__version__,
            "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(),
        }
    )
    data_config = timm.data.resolve_data_config(
        {"input_size": (3, IMG, IMG)},
        pretrained_cfg=timm.models.get_pretrained_cfg(MODEL).to_dict(),
    )
    cfg = TrainConfig(model=MODEL, img_size=IMG)
    tfs = {
        "train": build_transform(cfg, data_config, training=True),
        "train_aa_re": build_transform(
            cfg.replace(aa=AA, reprob=REPROB), data_config, training=True
        ),
        "eval": build_transform(cfg, data_config, training=False),
    }
    resize = shrink_op(tfs["eval"])

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NBTL_IMAGE_CACHE_DIR"] = str(Path(tmp) / "cache")
        t0 = time.perf_counter()
        files = photo_tree(Path(tmp) / "jpg", args.images)
        generated_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = cached_images(files, "bench-train", resize)
        build_s = time.perf_counter() - t0
        n = len(files)
        jpeg_bytes = sum(os.path.getsize(p) for p in files.paths)
        decoded_bytes = sum(w * h * 3 for w, h in (files.load(i).size for i in range(n)))
        size = {
            "measure": "cache_size",
            "images": n,
            "short_side": resize.size,
            "interpolation": resize.interpolation.value,
            "build_s": build_s,
            "build_images_per_s": n / build_s,
            "cache_mb_per_1k": os.path.getsize(cached.path) / n / 1e3,
            "jpeg_mb_per_1k": jpeg_bytes / n / 1e3,
            "full_decoded_mb_per_1k": decoded_bytes / n / 1e3,
        }
        emit(size)
        effect = pixel_effect(files, cached, tfs["eval"], min(args.check_images, n))
        emit(effect)

        variants = {}
        for k, (name, tf) in enumerate(tfs.items()):
            variants[f"files_{name}"] = cycling_batches(TransformedDataset(files, tf), k)
            variants[f"cache_{name}"] = cycling_batches(TransformedDataset(cached, tf), k)
        budget = args.budget_s - (time.perf_counter() - started)
        t = interleaved(
            variants,
            Clock(torch.device("cpu")),
            args.rounds,
            args.batches,
            1,
            time.perf_counter() + max(budget, 10.0),
        )
        records = []
        for name in tfs:
            rec = measurement(
                f"cache speed-up, {name}",
                f"cache_speedup_{name}",
                paired(t, f"files_{name}", f"cache_{name}"),
                t,
                f"cache_{name}",
                f"files_{name}",
                model=MODEL,
                img_size=IMG,
                batch=BATCH,
            )
            rec["images_per_s_cache"] = BATCH / rec["median_s_a"]
            rec["images_per_s_files"] = BATCH / rec["median_s_b"]
            records.append(rec)
            emit(rec)

    print(
        f"\n{'transform':<14}{'files img/s':>12}{'cache img/s':>12}{'speed-up':>10}{'quartiles':>14}"
        f"{'rounds':>8}"
    )
    for r in records:
        name = r["measure"].removeprefix("cache_speedup_")
        print(
            f"{name:<14}{r['images_per_s_files']:>12.0f}{r['images_per_s_cache']:>12.0f}"
            f"{r['value']:>10.2f}{r['quartiles'][0]:>8.2f}..{r['quartiles'][1]:.2f}{r['rounds']:>8}"
        )
    print(
        f"\ncache: shorter side {size['short_side']} px ({size['interpolation']}); per 1,000 images "
        f"{size['cache_mb_per_1k']:.0f} MB (JPEGs {size['jpeg_mb_per_1k']:.0f} MB, full-size decoded "
        f"{size['full_decoded_mb_per_1k']:.0f} MB); built at {size['build_images_per_s']:.0f} images/s"
    )
    mad, bil, jpg = (
        effect[k] for k in ("train_crop_mad", "bilinear_vs_bicubic_mad", "jpeg_q90_mad")
    )
    print(
        f"pixels: eval max |diff| {effect['eval_max_abs_diff']:.1f}; train crops resized to {IMG} px, "
        "mean |diff| in 0..255 levels, cached vs original (yardsticks: bilinear instead of bicubic; "
        "saved again as JPEG q90): "
        + ", ".join(
            f"{100 * float(a):.0f}% area {mad[a]:.2f} ({bil[a]:.2f}; {jpg[a]:.2f})" for a in mad
        )
    )
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s (tree {generated_s:.0f} s), 1 torch thread, "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    return 0 if effect["eval_max_abs_diff"] == 0 else 1  # evaluation must be pixel-exact


if __name__ == "__main__":
    sys.exit(main())
