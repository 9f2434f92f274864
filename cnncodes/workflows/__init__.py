"""What the commands run, as plain functions: experiments (:mod:`.experiment`), their
evaluation and reports, comparisons, advice, the recipe registry and the offline demo.
"""

from ..utils.lazy import lazy_face

_EXPORTS = {
    "Advice": "advise",
    "SMALL_PER_CLASS": "advise",
    "advise": "advise",
    "block_outputs": "advise",
    "APPROACHES": "compare",
    "Comparison": "compare",
    "compare_approaches": "compare",
    "FEATURE_SETS": "demo",
    "fit_command": "demo",
    "local_imagenet_weights": "demo",
    "raw_pixels": "demo",
    "run_demo": "demo",
    "summary_lines": "demo",
    "DigitsNet": "demo_data",
    "IMAGE_SIZE": "demo_data",
    "MEAN": "demo_data",
    "PREPROCESSING": "demo_data",
    "SOURCE_CLASSES": "demo_data",
    "STD": "demo_data",
    "TARGET_CLASSES": "demo_data",
    "digits_net": "demo_data",
    "load_image_folder": "demo_data",
    "pretrain": "demo_data",
    "write_digits_dataset": "demo_data",
    "check_labelled": "evaluation",
    "classification_metrics": "evaluation",
    "cv_table": "evaluation",
    "layer_table": "evaluation",
    "stratified_split": "evaluation",
    "ExperimentResult": "experiment",
    "predict_images": "experiment",
    "run_experiment": "experiment",
    "set_runtime": "experiment",
    "verify_model": "experiment",
    "LAYER_MODES": "recipes",
    "available": "recipes",
    "get": "recipes",
    "layer_mode": "recipes",
    "load": "recipes",
    "make_cv": "recipes",
    "register": "recipes",
    "plot_comparison": "report",
    "plot_confusion_matrix": "report",
    "plot_layer_sweep": "report",
    "plot_training_curves": "report",
    "write_comparison": "report",
    "write_finetune_report": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
