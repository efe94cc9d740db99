"""What objectives share: precision, trainer setup, checkpoints and resume, callbacks, run records."""

from tunelab.training.callbacks import RunLogger
from tunelab.training.precision import bf16_supported, compute_dtype
from tunelab.training.records import RunRecord
from tunelab.training.setup import load_for_training, parameter_counts, save_result
from tunelab.training.trainer import TunelabTrainer, latest_checkpoint, training_arguments

__all__ = ["RunLogger", "bf16_supported", "compute_dtype", "RunRecord", "load_for_training", "parameter_counts",
           "save_result", "TunelabTrainer", "latest_checkpoint", "training_arguments"]
