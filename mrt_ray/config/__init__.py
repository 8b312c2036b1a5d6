"""Configuration: the typed schema (`schema`) and its loading and per-key checks (`load`)."""
from mrt_ray.config.load import (
    CONF_DIR,
    GROUPS,
    ConfigError,
    check_fields,
    from_yaml_file,
    group_presets,
    is_global_preset,
    load_config,
    to_dict,
    to_yaml,
)
from mrt_ray.config.schema import (
    AlgoConfig,
    BootstrapConfig,
    Config,
    EvalConfig,
    GridConfig,
    LearnerConfig,
    ModelConfig,
    MRTConfig,
    ProgressConfig,
    RayConfig,
    RolloutConfig,
    RunConfig,
    SegmentConfig,
    SweepConfig,
    TaskConfig,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "CONF_DIR", "GROUPS", "AlgoConfig", "BootstrapConfig", "Config", "ConfigError", "EvalConfig", "GridConfig",
    "LearnerConfig", "MRTConfig", "ModelConfig", "ProgressConfig", "RayConfig", "RolloutConfig", "RunConfig",
    "SegmentConfig", "SweepConfig", "TaskConfig", "TrainConfig", "WandbConfig", "check_fields", "from_yaml_file",
    "group_presets", "load_config", "to_dict", "to_yaml",
]
