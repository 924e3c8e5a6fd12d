"""Public model API, mirroring `keras_hub.models`."""

from gpt2_lib.models.backbone import Backbone
from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone

__all__ = ["Backbone", "GPT2Backbone"]
