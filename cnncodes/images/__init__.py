"""Image files -> RGB pixels (:mod:`.load`), views of an image (:mod:`.views`), labelled
datasets from a folder tree or a manifest (:mod:`.datasets`).
"""

from ..utils.lazy import lazy_face

_EXPORTS = {
    "DatasetError": "datasets",
    "DatasetWarning": "datasets",
    "IMAGE_EXTENSIONS": "datasets",
    "ImageDataset": "datasets",
    "load_dataset": "datasets",
    "load_files": "datasets",
    "DECODE_POLICY": "load",
    "ImageLoadError": "load",
    "MAX_PIXELS": "load",
    "file_digest": "load",
    "file_stamp": "load",
    "jpeg_orientation": "load",
    "load_image": "load",
    "load_image_bytes": "load",
    "read_file": "load",
    "CORNERS": "views",
    "VIEW_REDUCES": "views",
    "VIEW_SETS": "views",
    "check_view": "views",
    "check_view_reduce": "views",
    "expand_views": "views",
    "reduce_views": "views",
    "view_box": "views",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
