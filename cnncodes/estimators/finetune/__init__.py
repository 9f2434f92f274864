"""Fine-tuning (CS231n scenarios 2 and 4): freeze the first layers, replace the head, re-train.

- :mod:`.network`: the pretrained trunk cut at a layer, frozen up to a node, with a new head;
  the cut at the freeze node that lets the frozen part's activations come from the code cache.
- :mod:`.data`: image datasets with train-time augmentation, and cached activations.
- :mod:`.training`: skorch's classifier and callbacks, the per-epoch state file (resume).
- :mod:`.estimator`: :class:`FineTune`, the scikit-learn classifier over image paths.

Needs skorch (``pip install cnncodes[finetune]``).
"""

from .estimator import FineTune
from .training import FineTuneError

__all__ = ["FineTune", "FineTuneError"]
