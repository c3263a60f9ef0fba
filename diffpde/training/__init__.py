"""Training: the denoising losses and the Accelerate trainer.

- :mod:`.losses`: ``EDMLoss``, ``VPLoss``, ``VELoss``, ``FlowMatchingLoss`` (``build_loss``).
- :mod:`.config`: the typed YAML config on pydantic (``load_config``, ``TrainConfig``): bases,
  variants, dotted overrides.
- :mod:`.trainer`: ``Trainer`` / ``train`` (``scripts/train.py`` and ``diffpde train`` run it).
- :mod:`.checkpoint`: atomic, rotated checkpoints that load without unpickling; :mod:`.ema`: ``EMA``;
  :mod:`.records`: atomic JSON files and JSONL logs; :mod:`.evaluation`: sampling-based evaluation
  during training.
"""

from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig, load_config
from .ema import EMA
from .losses import build_loss
from .trainer import Trainer, train

__all__ = ["CheckpointError", "ConfigError", "EMA", "TrainConfig", "Trainer", "build_loss", "load_config", "train"]
