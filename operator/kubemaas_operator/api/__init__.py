"""PURE: typed models of the ModelDeployment API (serving.kubemaas.io/v1alpha1).

They mirror crds/serving.kubemaas.io_modeldeployments.yaml field for field; each dataclass field
carries its JSON name in `metadata["json"]`, and tests/unit/test_api_schema.py fails when the two
disagree. The API server validates first (schema + CEL); `parse_spec` validates again because an
object may predate a stricter schema, and turns what it finds into a `SpecError` that names the
field and says what to fix.

One module a part of the spec, each with its dataclasses and its `parse_*`:
  fields.py            SpecError, the JSON-name metadata, the shared checks, to_json
  model.py             spec.model (optimize.py: spec.model.optimize)
  runtime.py           spec.runtime, spec.podMetadata
  llm.py               spec.model.shape, spec.runtime.engine and .llm; engine/format checks
  placement.py         spec.gpu, spec.scheduling
  scaling.py           spec.replicas, spec.autoscaling
  serving.py           spec.serving (serving_security.py: auth, tls, networkPolicy;
                       inference.py: inferencePool, and is_llm)
  rollout.py           spec.rollout (canary included)
  spec.py              ModelDeploymentSpec, parse_spec (the parts together), the API's names
  status.py            ModelDeploymentStatus and its parts
This package exports them all: callers import from `kubemaas_operator.api`.
"""

from .fields import SpecError, to_json
from .inference import (
    EndpointPicker,
    InferencePoolSpec,
    is_llm,
    parse_endpoint_picker,
    parse_inference_pool,
)
from .llm import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    ENGINES,
    SHAPE_KEYS,
    WINDOW_KEYS,
    LLMSettings,
    ModelShape,
    default_engine,
    parse_shape,
)
from .model import FORMATS, ModelSource, SecretRef, parse_model
from .optimize import OptimizeSpec, parse_optimize
from .placement import GPUSizing, GPUSpec, Scheduling, Toleration, parse_gpu, parse_scheduling
from .rollout import CanarySpec, CanaryStep, RolloutSpec, parse_canary, parse_rollout
from .runtime import (
    DEFAULT_CONVERTER_IMAGE,
    RESERVED_LABEL_PREFIXES,
    Batching,
    EnvVar,
    PodMetadata,
    Resources,
    RuntimeSpec,
    parse_pod_metadata,
    parse_runtime,
)
from .scaling import Autoscaling, parse_autoscaling, parse_replicas
from .serving import GatewayRef, Serving, parse_gateway, parse_serving
from .serving_security import NetworkPolicySpec, ServingAuth, ServingTLS
from .spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ModelDeploymentSpec,
    parse_spec,
    valid_name,
)
from .status import (
    CONDITION_TYPES,
    PHASES,
    CanaryStatus,
    Condition,
    FailedRevision,
    ModelDeploymentStatus,
    RevisionHistoryEntry,
    RevisionRef,
    RolloutStatus,
    UpdateRevision,
)

__all__ = [
    "API_VERSION", "CONDITION_TYPES", "DEFAULT_CONVERTER_IMAGE", "DEFAULT_GPU_MEMORY_UTILIZATION",
    "ENGINES", "FORMATS", "GROUP", "KIND", "PHASES", "PLURAL", "RESERVED_LABEL_PREFIXES",
    "SHAPE_KEYS", "VERSION", "WINDOW_KEYS",
    "Autoscaling", "Batching", "CanarySpec", "CanaryStatus", "CanaryStep", "Condition",
    "EndpointPicker", "EnvVar", "FailedRevision", "GPUSizing", "GPUSpec", "GatewayRef",
    "InferencePoolSpec", "LLMSettings", "ModelDeploymentSpec", "ModelDeploymentStatus",
    "ModelShape", "ModelSource", "NetworkPolicySpec",
    "OptimizeSpec", "PodMetadata", "Resources", "RevisionHistoryEntry", "RevisionRef",
    "RolloutSpec", "RolloutStatus", "RuntimeSpec", "Scheduling", "SecretRef", "Serving",
    "ServingAuth", "ServingTLS", "SpecError", "Toleration", "UpdateRevision",
    "default_engine", "is_llm", "parse_autoscaling", "parse_canary", "parse_endpoint_picker",
    "parse_gateway", "parse_gpu", "parse_inference_pool", "parse_model", "parse_optimize",
    "parse_pod_metadata",
    "parse_replicas", "parse_rollout", "parse_runtime", "parse_scheduling", "parse_serving",
    "parse_shape", "parse_spec", "to_json", "valid_name",
]
