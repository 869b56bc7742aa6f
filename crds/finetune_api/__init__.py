"""The finetune.dev/v1alpha1 API: typed models, manifest parsing and the CRD generator."""

from finetune_api.manifest import SpecError, UserError, load_manifest, parse
from finetune_api.models import (
    API_VERSION,
    GROUP,
    VERSION,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    HyperparameterSweep,
    HyperparameterSweepSpec,
    HyperparameterSweepStatus,
    Phase,
    Task,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "HyperparameterSweep",
    "HyperparameterSweepSpec",
    "HyperparameterSweepStatus",
    "Phase",
    "SpecError",
    "Task",
    "UserError",
    "load_manifest",
    "parse",
]
