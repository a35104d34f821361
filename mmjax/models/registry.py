"""The model layer's two registries, in a module that imports nothing else of the layer.

ENCODERS   encoder name (a tower config's "encoder" field) -> encoder class; each encoder
           module (vit, text, audio, point) registers its own class.
MODELS     model kind (config.model.kind) -> builder(model_cfg, tokenizer); each model family
           module (towers, mae, simmim, multimae) registers its own builders.

They live apart from `mmjax.models.__init__` so that every encoder and family can register
itself at import without a cycle; `mmjax.models` imports all of them, so both tables are full
once anything under mmjax.models is imported.
"""
from mmjax.registry import Registry

ENCODERS = Registry("encoder")
MODELS = Registry("model kind")
