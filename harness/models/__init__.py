"""Model registry. One line per architecture; see registry.py for what a spec holds."""

from harness.models.registry import GROUPS, MODELS, ModelSpec, get_model, register, resolve_models

# --- registrations (one import per model file; each file calls register()) ---
from harness.models import crabnet  # noqa: F401,E402

__all__ = ["GROUPS", "MODELS", "ModelSpec", "get_model", "register", "resolve_models"]
