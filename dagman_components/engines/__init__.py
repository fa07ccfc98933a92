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
    FreezeLastLayer,
    PretrainCheckpoint,
    TeacherTemperatureSchedule,
    ema_momentum,
    latest_checkpoint,
    unwrap,
)

__all__ = [
    "CoDistillationTrainer",
    "CollapseMonitor",
    "EMATeacherUpdate",
    "FreezeLastLayer",
    "MASKING_STRATEGIES",
    "PretrainCheckpoint",
    "TeacherTemperatureSchedule",
    "ema_momentum",
    "latest_checkpoint",
    "make_teacher",
    "parameter_groups",
    "unwrap",
]
