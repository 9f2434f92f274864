"""Training data for fine-tuning: images with train-time augmentation, or cached activations."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from ...extraction.decode import preprocess
from ...images.load import ImageLoadError, load_image

#: Area range of the random resized crop, of the image resized as for evaluation. Milder than
#: ImageNet training's (0.08, 1): a small dataset's object usually fills the frame.
CROP_SCALE = (0.35, 1.0)


def normalise(pixels, preprocessing):
    """uint8 ``(3, H, W)`` pixels -> the float tensor the network receives."""
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


class Images(torch.utils.data.Dataset):
    """``(input tensor, label)`` pairs of image files, preprocessed as ``preprocessing`` says.

    With ``augment`` other than ``"none"``, each read is a new random view: the image is resized
    as for evaluation, then randomly cropped (area :data:`CROP_SCALE`, resized to the input size)
    and/or flipped left-right. Labels of ``-1`` stand for "unknown" (prediction).
    An unreadable file raises :class:`~cnncodes.images.ImageLoadError` naming it.
    """

    def __init__(self, paths, labels, preprocessing, augment="none"):
        self.paths = list(paths)
        self.labels = np.full(len(self.paths), -1) if labels is None else np.asarray(labels)
        self.preprocessing = preprocessing
        self.augment = augment

    def __len__(self):
        return len(self.paths)

    def with_augment(self, augment):
        """The same images and labels under another augmentation (validation reads plain views)."""
        return Images(self.paths, self.labels, self.preprocessing, augment)

    def _random_view(self, image):
        pre = self.preprocessing
        mode = InterpolationMode(pre.interpolation)
        image = TF.resize(image, list(pre.resize), interpolation=mode, antialias=True)
        if "crop" in self.augment:
            crop = T.RandomResizedCrop(pre.input_size, scale=CROP_SCALE, interpolation=mode)
            image = crop(image)
        elif pre.crop is not None:
            image = TF.center_crop(image, list(pre.crop))
        if "flip" in self.augment and torch.rand(()) < 0.5:
            image = TF.horizontal_flip(image)
        return TF.pil_to_tensor(image)

    def __getitem__(self, i):
        image = load_image(self.paths[i])
        if self.augment == "none":
            pixels = preprocess(image, self.preprocessing)
        else:
            pixels = self._random_view(image)
        return normalise(pixels, self.preprocessing), torch.as_tensor(int(self.labels[i]))


class Activations(torch.utils.data.Dataset):
    """``(activation, label)`` pairs: the frozen trunk's outputs, read once from the code cache."""

    def __init__(self, activations, labels):
        self.activations = torch.as_tensor(activations)
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.activations)

    def with_augment(self, augment):
        return self

    def __getitem__(self, i):
        return self.activations[i], torch.as_tensor(int(self.labels[i]))


class Subset(torch.utils.data.Dataset):
    """Rows ``indices`` of a dataset (what skorch's split returns), its augmentation replaceable."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]


def readable(paths, threads=4):
    """``(kept indices, skipped [(index, path, reason)])``: every image decoded once, up front.

    A corrupt file found in the middle of epoch 3 would cost the epochs before it; found here it
    costs a decode of each file (cheap beside one epoch of training).
    """

    def check(path):
        try:
            load_image(path)
        except ImageLoadError as exc:
            return exc
        return None

    with ThreadPoolExecutor(threads) as pool:
        errors = list(pool.map(check, paths))
    skipped = [(i, p, e) for i, (p, e) in enumerate(zip(paths, errors)) if e is not None]
    kept = np.array([i for i, e in enumerate(errors) if e is None], dtype=np.int64)
    return kept, skipped
