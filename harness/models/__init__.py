"""Model registry. One line per architecture; see registry.py for what a spec holds."""

from harness.models.registry import GROUPS, MODELS, ModelSpec, get_model, register, resolve_models

# --- registrations (one import per model file; each file calls register()) ---
from harness.models import crabnet  # noqa: F401,E402
from harness.models import lgdcnn, roost  # noqa: F401,E402
from harness.models import irnet, elemnet, classical  # noqa: F401,E402
from harness.models import crysformer, alignn, cgcnn, schnet, lern, irnet_structure  # noqa: F401,E402  (all-structure)

__all__ = ["GROUPS", "MODELS", "ModelSpec", "get_model", "register", "resolve_models"]
