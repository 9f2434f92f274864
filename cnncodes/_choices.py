"""Names the API accepts, importable without torch (the command line's --help lists them)."""

#: How spatial maps become vectors (:mod:`cnncodes.pooling`).
POOLINGS = ("avg", "max", "avgmax", "pyramid", "flatten")
#: Extraction precisions (:func:`cnncodes.extract.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Extraction engines (:func:`cnncodes.extract.extract_codes`): this process, or a Ray cluster.
ENGINES = ("local", "ray")

#: Median images per class from which ``cnncodes advise`` counts a dataset as large (then
#: fine-tuning pays); here so that the command's help names it without importing torch.
SMALL_PER_CLASS = 1000
#: Fine-tuning's train-time augmentations (:mod:`cnncodes.finetune.data`).
AUGMENTS = ("crop-flip", "crop", "flip", "none")
#: Fine-tuning's new heads (:mod:`cnncodes.finetune.network`).
HEADS = ("linear", "mlp")
#: How fine-tuning starts its head: random, or LP-FT's logistic regression (``"probe"``).
INIT_HEADS = ("random", "probe")
