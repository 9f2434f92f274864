"""cnncodes: CNN codes from frozen pretrained networks, cached, for scikit-learn."""

from .cache import CodeStore, list_configs, resolve_cache_dir
from .datasets import DatasetWarning, ImageDataset, load_dataset
from .extract import ExtractionResult, SkippedImage, extract_codes
from .images import ImageLoadError, load_image
from .models import (
    LayerError,
    LayerInfo,
    ModelError,
    ModelSpec,
    WeightsError,
    WeightsUnavailableError,
    build_model,
    list_layers,
    resolve_spec,
)
from .persistence import ModelFileError
from .transformers import (
    CNNCodes,
    SignedPower,
    SkippedImagesError,
    SkippedImagesWarning,
    filter_readable,
    warm_cache,
)

__version__ = "0.1.0"

__all__ = [
    "CNNCodes",
    "SignedPower",
    "SkippedImagesError",
    "SkippedImagesWarning",
    "filter_readable",
    "warm_cache",
    "DatasetWarning",
    "ImageDataset",
    "load_dataset",
    "ModelFileError",
    "CodeStore",
    "ExtractionResult",
    "ImageLoadError",
    "LayerError",
    "LayerInfo",
    "ModelError",
    "ModelSpec",
    "SkippedImage",
    "WeightsError",
    "WeightsUnavailableError",
    "build_model",
    "extract_codes",
    "list_configs",
    "list_layers",
    "load_image",
    "resolve_cache_dir",
    "resolve_spec",
    "__version__",
]
