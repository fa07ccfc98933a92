"""Training engines and their handlers."""

from dagman_components.engines.co_distillation import (
    MASKING_STRATEGIES,
    CoDistillationTrainer,
    make_teacher,
    parameter_groups,
)
from dagman_components.engines.handlers import (
    CollapseMonitor,
    EMATeacherUpdate,
    EpochSeed,
    FinalValidationHandler,
    FreezeLastLayer,
    ModelCheckpointLoader,
    PretrainCheckpoint,
    TeacherTemperatureSchedule,
    checkpoints_newest_first,
    ema_momentum,
    epoch_seed,
    latest_checkpoint,
    other_encoder,
    select_encoder,
    unwrap,
)

__all__ = [
    "CoDistillationTrainer",
    "CollapseMonitor",
    "EMATeacherUpdate",
    "EpochSeed",
    "FinalValidationHandler",
    "FreezeLastLayer",
    "MASKING_STRATEGIES",
    "ModelCheckpointLoader",
    "PretrainCheckpoint",
    "TeacherTemperatureSchedule",
    "checkpoints_newest_first",
    "ema_momentum",
    "other_encoder",
    "select_encoder",
    "epoch_seed",
    "latest_checkpoint",
    "make_teacher",
    "parameter_groups",
    "unwrap",
]
