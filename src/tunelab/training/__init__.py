"""What objectives share: autocast, trainer setup, checkpoints and resume, callbacks, run records."""

from tunelab.hardware import bf16_native, compute_dtype
from tunelab.training.callbacks import RunLogger
from tunelab.training.records import RunRecord
from tunelab.training.setup import (
                                    cost_summary,
                                    load_for_training,
                                    make_trainer,
                                    parameter_counts,
                                    save_result,
                                    task_for,
                                    train,
)
from tunelab.training.trainer import (
                                    TunelabTrainer,
                                    latest_checkpoint,
                                    training_arguments,
)

__all__ = [
                                    "RunLogger",
                                    "RunRecord",
                                    "TunelabTrainer",
                                    "cost_summary",
                                    "latest_checkpoint",
                                    "load_for_training",
                                    "make_trainer",
                                    "parameter_counts",
                                    "save_result",
                                    "task_for",
                                    "train",
                                    "training_arguments",
]
