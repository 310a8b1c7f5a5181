"""Model code and weight loaders. Importing the package registers the
built-in architectures (engine/models/registry.py); a new one is a new
module plus one import line here."""
from engine.models import llama, qwen  # noqa: F401  (registers)
