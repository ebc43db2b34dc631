"""One inference pass of the pre-trained model over the target's training images: the probe's features.

`probe_features(cfg)` builds the model exactly as a run does before re-initialisation
(`create_model` with the run's seed, so even the fresh target classifier is the run's), the training
split a run would train on (`cfg.train_split`) with the deterministic evaluation transform (resize,
centre crop; no augmentation), and runs it once under `torch.inference_mode` on `cfg.device`, in
float32 (`cfg.amp` and `cfg.channels_last` are ignored: the pass is short and the scores want full
precision). It collects, for every layer of `layer_partition` (layer 1 = the classifier), the layer's
output globally average-pooled to one vector per image:

- layer 1: the model's output, the logits over the target's `num_classes` (of the classifier as
  created, before any training: for a checkpoint or hub weights with another class count this is a
  randomly initialised classifier, seeded by `cfg.seed`, exactly as a run's before re-initialisation);
- a layer whose name is a module of the model (`layer4`, `features.21`, `blocks.11`): that module's
  output;
- any other layer (timm's merged `stem` group, or a `+`-joined name): the input of the first module
  of the layer above it that runs, i.e. what the layer hands upwards (for a timm ResNet's stem: the
  output of the max-pool, which owns no parameters and so belongs to no layer).

Pooling: a `N x C x H x W` output is averaged over H, W (over H, W of `N x H x W x C` for timm models
whose `output_fmt` is NHWC); a `N x T x D` token sequence over its T tokens; `N x D` is kept. A module
called more than once in a forward pass gives its first call.

The source head, when the pre-trained weights have one, is applied to the classifier's input (the
pre-logits features, hooked on the way) and gives `source_probs`, its softmax on the target images:

- `pretrained_file`: the file's classifier tensors (the ones `create_model` leaves out because the
  target has its own class count), loaded into a classifier of the file's class count;
- `pretrained: true` (timm hub): the classifier of the model timm creates with its default
  `num_classes` (e.g. ImageNet's 1000), loaded from the hub cache;
- neither, a file without classifier tensors, or hub weights without a head (`num_classes` 0):
  `source_probs` is None and `source_head` says why.

The probe builds its own model and never writes to the checkpoint; the caller's random streams
(Python's `random`, numpy's global RNG, torch's CPU generator) are left as they were.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import timm.data
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from .config import InputError, TrainConfig
from .data import TransformedDataset, build_splits, build_transform
from .layers import Layer, layer_partition
from .model import _classifier_prefix, create_model


@dataclass
class LayerFeatures:
    index: int  # 1 = the classifier (counted from the top, as `layer_partition`)
    name: str  # e.g. "head", "layer4", "features.21", "stem"
    features: np.ndarray  # N x D float32: the layer's output, globally average-pooled


@dataclass
class ProbeFeatures:
    layers: list[LayerFeatures]  # one per layer of the partition, index 1 (top) first
    labels: np.ndarray  # N int64 target labels, in the order of the features' rows
    num_classes: int  # the target's class count (the model's classifier size)
    source_probs: np.ndarray | None  # N x C_source float32 softmax of the source head, or None
    source_head: str  # where the source head came from, or why there is none
    seconds: float  # wall time of the inference pass (loading, transforming, forward, pooling)

    def layer(self, index: int) -> LayerFeatures:
        return self.layers[index - 1]


def probe_features(cfg: TrainConfig, max_images: int | None = None) -> ProbeFeatures:
    """The probe's features of the pre-trained model on the target's training images (see module doc).

    `max_images` caps the images used: a class-balanced subset (classes take turns, each in its
    dataset order), kept in dataset order. InputError for bad input, as a run would raise it.
    The caller's random streams (Python's, numpy's global, torch's CPU generator) are left as they
    were: a worker may probe before its trials without changing them.
    """
    with _random_state_kept():
        return _probe(cfg, max_images)


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    # Python's random moves even on a first `import sklearn.datasets` (the digits loader's), and
    # timm's training transforms draw from it
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _probe(cfg: TrainConfig, max_images: int | None) -> ProbeFeatures:
    from .setup import resolve_device

    if max_images is not None and max_images < 1:
        raise InputError(f"max_images must be >= 1, got {max_images}")
    device = resolve_device(cfg.device)
    splits = build_splits(cfg)
    base: Dataset = (
        splits.train if cfg.train_split == "train" else ConcatDataset([splits.train, splits.val])
    )
    if len(base) == 0:  # type: ignore[arg-type]
        where = f" in {cfg.data_dir}" if cfg.data_dir else ""
        raise InputError(
            f"the {cfg.train_split} split of dataset {cfg.dataset!r}{where} has no images"
        )
    num_classes = cfg.num_classes or len(splits.classes)
    if num_classes < len(splits.classes):
        raise InputError(f"num_classes {num_classes} < the dataset's {len(splits.classes)} classes")
    if max_images is not None and max_images < len(base):  # type: ignore[arg-type]
        base = Subset(base, _balanced_subset(base, max_images))

    # As build_run: the model is created right after seeding torch with cfg.seed (only the CPU
    # generator: torch.manual_seed would also queue a lazy CUDA seed, see trainer.layers)
    torch.random.default_generator.manual_seed(cfg.seed)
    model = create_model(cfg, num_classes)
    head, head_note = _source_head(cfg, model)
    layers = layer_partition(model)
    model.to(device)
    if head is not None:
        head.to(device)

    data_config = timm.data.resolve_data_config(
        {"input_size": (3, cfg.img_size, cfg.img_size)} if cfg.img_size else {}, model=model
    )
    transform = build_transform(cfg, data_config, training=False)
    # its own generator: even an unshuffled loader draws a base seed, which would move the global RNG
    loader = DataLoader(
        TransformedDataset(base, transform),
        batch_size=2 * cfg.batch_size,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    t0 = time.perf_counter()
    feats, labels, probs = extract_features(model, layers, loader, device, source_head=head)
    seconds = time.perf_counter() - t0
    return ProbeFeatures(
        layers=[LayerFeatures(layer.index, layer.name, f) for layer, f in zip(layers, feats)],
        labels=labels,
        num_classes=num_classes,
        source_probs=probs,
        source_head=head_note,
        seconds=seconds,
    )


def extract_features(
    model: nn.Module,
    layers: Sequence[Layer],
    loader: DataLoader,
    device: torch.device | str = "cpu",
    source_head: nn.Module | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """One pass of `model` (in eval mode) over `loader`'s `(images, labels)` batches.

    Returns the pooled output of every layer in `layers` (in their order; N x D float32 each), the
    labels (N int64) and, with a `source_head`, its softmax on the classifier's input (N x C
    float32; else None). The model's parameters and buffers are untouched (inference mode, eval
    mode), and its training mode is restored afterwards.
    """
    device = torch.device(device)
    modules = dict(model.named_modules())
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    by_index = sorted(layers, key=lambda layer: layer.index)
    captured: dict[object, torch.Tensor] = {}
    handles = []

    def keep(key: object, value: object) -> None:
        if key not in captured:  # a module called twice in one pass: its first call
            captured[key] = _first_tensor(value, key)

    def on_output(key: object):
        return lambda _module, _args, output: keep(key, output)

    def on_input(key: object):
        return lambda _module, args: keep(key, args[0] if args else None)

    for pos, layer in enumerate(by_index):
        if pos == 0:
            handles.append(model.register_forward_hook(on_output(layer.index)))
        elif layer.name in modules and layer.name:
            handles.append(modules[layer.name].register_forward_hook(on_output(layer.index)))
        else:  # what this layer hands upwards: the input of the layer above's first module to run
            for name in by_index[pos - 1].module_names:
                handles.append(modules[name].register_forward_pre_hook(on_input(layer.index)))
    if source_head is not None:
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        if not isinstance(classifier, nn.Module):
            raise InputError(f"{type(model).__name__} has no classifier module for the source head")
        handles.append(classifier.register_forward_pre_hook(on_input("pre_logits")))

    was_training = model.training
    head_training = source_head.training if source_head is not None else False
    outputs: list[list[torch.Tensor]] = [[] for _ in by_index]
    all_labels: list[torch.Tensor] = []
    all_probs: list[torch.Tensor] = []
    try:
        model.eval()
        if source_head is not None:
            source_head.eval()
        with torch.inference_mode():
            for images, labels in loader:
                captured.clear()
                model(images.to(device, non_blocking=True))
                for pos, layer in enumerate(by_index):
                    if layer.index not in captured:
                        raise InputError(
                            f"the forward pass of {type(model).__name__} never reached "
                            f"layer {layer.index} ({layer.name}): cannot pool its output"
                        )
                    outputs[pos].append(_pool(captured[layer.index], nhwc).float().cpu())
                if source_head is not None:
                    logits = source_head(captured["pre_logits"])
                    all_probs.append(torch.softmax(logits.flatten(1).float(), dim=1).cpu())
                all_labels.append(torch.as_tensor(labels).cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if source_head is not None:
            source_head.train(head_training)
    feats = [torch.cat(o).numpy() for o in outputs]
    probs = torch.cat(all_probs).numpy() if source_head is not None else None
    return feats, torch.cat(all_labels).to(torch.int64).numpy(), probs


def _first_tensor(value: object, key: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise InputError(f"layer {key}: the hooked module gives {type(value).__name__}, not a tensor")


def _pool(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """Global average pool to N x D: spatial dims of N x C x H x W (N x H x W x C when `nhwc`),
    tokens of N x T x D; N x D as is."""
    if t.ndim == 2:
        return t
    if t.ndim == 3:
        return t.mean(dim=1)
    if t.ndim == 4 and nhwc:
        return t.mean(dim=(1, 2))
    return t.flatten(2).mean(dim=2)  # N x C x (spatial...)


def _dataset_labels(ds: Dataset) -> list[int] | None:
    labels = getattr(ds, "labels", None)
    if labels is not None:
        return list(labels)
    if isinstance(ds, ConcatDataset):
        parts = [_dataset_labels(d) for d in ds.datasets]
        if all(p is not None for p in parts):
            return [y for p in parts for y in p]  # type: ignore[union-attr]
    return None


def _balanced_subset(ds: Dataset, count: int) -> list[int]:
    """`count` indices, classes taking turns (each class in dataset order), returned sorted.
    A dataset that does not expose its labels gives its first `count` images."""
    labels = _dataset_labels(ds)
    if labels is None:
        return list(range(count))
    per_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        per_class.setdefault(int(y), []).append(i)
    queues = [per_class[c] for c in sorted(per_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for q in queues:
            if depth < len(q) and len(chosen) < count:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen)


# --- the source head -----------------------------------------------------------------------------


def _source_head(cfg: TrainConfig, model: nn.Module) -> tuple[nn.Module | None, str]:
    """(the source classifier, a line saying where it came from), or (None, why there is none)."""
    if cfg.pretrained_file:
        return _file_head(cfg, Path(cfg.pretrained_file).expanduser(), model)
    if cfg.pretrained:
        return _hub_head(cfg)
    return None, "no source head: the model has no pre-trained weights"


def _file_head(cfg: TrainConfig, path: Path, model: nn.Module) -> tuple[nn.Module | None, str]:
    prefix = _classifier_prefix(model)
    state = timm.models.load_state_dict(str(path))  # create_model has read it already: it loads
    head_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not head_state:
        return None, f"no source head: {path} holds no classifier tensors ({prefix}*)"
    weight = head_state.get("weight")
    if weight is None or weight.ndim < 2:
        return None, f"no source head: cannot read the class count of {prefix}* in {path}"
    classes = int(weight.shape[0])
    # The classifier of a model with the file's class count; the rest of that model is never
    # materialised (created on the meta device, then only the classifier gets real storage).
    try:
        with torch.device("meta"):
            shell = timm.create_model(cfg.model, num_classes=classes)
        head = shell.get_classifier().to_empty(device="cpu")
        head.load_state_dict(head_state)
    except Exception as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"no source head: {prefix}* of {path} does not fit {cfg.model!r} ({line})"
    return head, f"pretrained_file {path}: {prefix.rstrip('.')} with {classes} classes"


def _hub_head(cfg: TrainConfig) -> tuple[nn.Module | None, str]:
    source = timm.create_model(cfg.model, pretrained=True)  # hub weights, default num_classes
    head = source.get_classifier()
    classes = int(getattr(source, "num_classes", 0) or 0)
    if classes == 0 or not any(True for _ in head.parameters()):
        return None, f"no source head: timm's pre-trained {cfg.model!r} has no classifier"
    return head, f"timm hub weights of {cfg.model!r}: classifier with {classes} classes"
