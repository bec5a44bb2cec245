"""Tiny random Hugging Face models built from their configs, for tests and scripts (not the public API).

:func:`tiny_config` shrinks any transformers config (hidden sizes, depths, heads, image
size) so that a model of every architecture in an auto mapping builds in well under a
second and runs on a 64x64 image; :func:`save_tiny` writes one with ``save_pretrained``
(and an image processor when transformers has one for it) into a folder that
``hf:FOLDER`` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SIZE", "tiny_config", "save_tiny", "classification_architectures", "segmentation_architectures",
           "detection_architectures"]

IMAGE_SIZE = 64

# per-architecture settings on top of the generic shrink (names are the configs' own)
_OVERRIDES: dict[str, dict[str, Any]] = {
    "bit": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "embedding_size": 8, "num_groups": 4},
    "convnext": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
    "convnextv2": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
    "cvt": {"embed_dim": [8, 16, 32], "num_heads": [1, 2, 2], "depth": [1, 2, 3]},
    "dinat": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "kernel_size": 3,
              "dilations": [[1], [1], [1], [1]], "image_size": 64},
    "donut-swin": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2},
    "swin": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2},
    "swinv2": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2},
    "focalnet": {"embed_dim": 16, "depths": [1, 1, 1, 1]},
    "efficientformer": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 2], "dim": 32, "key_dim": 8,
                        "num_attention_heads": 2, "resolution": 2, "hidden_size": 32, "num_meta3d_blocks": 1},
    "van": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
    "efficientnet": {"width_coefficient": 0.1, "depth_coefficient": 0.1, "hidden_dim": 128},
    "hgnet_v2": {},
    "hiera": {"embed_dim": 8, "num_heads": [1, 1, 1, 1], "depths": [1, 1, 1, 1], "image_size": [64, 64],
              "patch_size": [7, 7], "patch_stride": [4, 4], "patch_padding": [3, 3], "query_stride": [2, 2],
              "masked_unit_size": [8, 8]},
    "levit": {"hidden_sizes": [16, 24, 32], "num_attention_heads": [1, 2, 2], "depths": [1, 1, 1],
              "key_dim": [8, 8, 8], "image_size": 64},
    "mobilenet_v1": {"depth_multiplier": 0.25},
    "mobilenet_v2": {"depth_multiplier": 0.25},
    "mobilevit": {"hidden_sizes": [16, 16, 16], "neck_hidden_sizes": [8, 8, 8, 8, 16, 16, 32],
                  "num_attention_heads": 2},
    "mobilevitv2": {"width_multiplier": 0.25, "attn_ffn_dim": 32},
    "perceiver": {"d_latents": 32, "num_latents": 3, "d_model": 32, "num_blocks": 1, "num_self_attends_per_block": 1,
                  "num_self_attention_heads": 2, "num_cross_attention_heads": 1, "image_size": 64},
    "poolformer": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
    "pvt": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
            "sequence_reduction_ratios": [2, 2, 1, 1], "mlp_ratios": [2, 2, 2, 2]},
    "pvt_v2": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
               "sr_ratios": [2, 2, 1, 1], "mlp_ratios": [2, 2, 2, 2]},
    "regnet": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "embedding_size": 8, "groups_width": 8},
    "resnet": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "embedding_size": 8},
    "segformer": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                  "decoder_hidden_size": 24},
    "swiftformer": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
    "textnet": {},
    "imagegpt": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "vocab_size": 513},
}

# segmentation heads read several encoder stages: settings on top of the model type's (by model_type)
_SEGMENTATION = {
    "beit": {"num_hidden_layers": 4, "out_indices": [1, 2, 3, 4], "use_auxiliary_head": False,
             "auxiliary_channels": 16, "pool_scales": [1, 2]},
    "data2vec-vision": {"num_hidden_layers": 4, "out_indices": [1, 2, 3, 4], "use_auxiliary_head": False,
                        "auxiliary_channels": 16, "pool_scales": [1, 2]},
    "dpt": {"num_hidden_layers": 4, "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [8, 16, 24, 32],
            "fusion_hidden_size": 16, "use_auxiliary_head": False},
    "upernet": {"hidden_size": 16, "auxiliary_channels": 16, "use_auxiliary_head": False, "pool_scales": [1, 2],
                "backbone_config": {"model_type": "resnet", "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
                                    "embedding_size": 8,
                                    "out_features": ["stage1", "stage2", "stage3", "stage4"]}},
}

_RESNET = {"model_type": "resnet", "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "embedding_size": 8}
_DETR = {"use_timm_backbone": False, "backbone": None, "use_pretrained_backbone": False, "d_model": 16,
         "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
         "encoder_ffn_dim": 16, "decoder_ffn_dim": 16, "num_queries": 4,
         "backbone_config": {**_RESNET, "out_features": ["stage4"]}}
# DETR-style detectors: a tiny ResNet backbone instead of a timm one
_DETECTION = {
    "detr": _DETR, "conditional_detr": _DETR, "table-transformer": _DETR,
    "deformable_detr": {**_DETR, "d_model": 32, "decoder_layers": 2, "num_feature_levels": 2, "encoder_n_points": 2, "decoder_n_points": 2,
                        "backbone_config": {**_RESNET, "out_features": ["stage3", "stage4"]}},
}

_SCALARS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "projection_dim": 16, "num_key_value_heads": 2, "vocab_size": 99, "max_position_embeddings": 64}


def _small_settings(config_class: Any, model_type: str) -> dict[str, Any]:
    """Constructor arguments that shrink ``config_class`` (given to ``__init__``: derived fields follow)."""
    from transformers import CONFIG_MAPPING

    default = config_class().to_dict()
    aliases = getattr(config_class, "attribute_map", {}) or {}  # ConvNext's num_hidden_layers is its num_stages
    settings: dict[str, Any] = {key: value for key, value in _SCALARS.items()
                                if isinstance(default.get(key), int) and key not in aliases}
    if isinstance(default.get("image_size"), int):
        settings["image_size"] = IMAGE_SIZE
    if isinstance(default.get("patch_size"), int) and default["patch_size"] > 16:
        settings["patch_size"] = 16
    for sub in ("vision_config", "text_config", "backbone_config"):
        inner = default.get(sub)
        if isinstance(inner, dict) and inner.get("model_type") in CONFIG_MAPPING:
            inner_type = inner["model_type"]
            settings[sub] = {**_small_settings(CONFIG_MAPPING[inner_type], inner_type), "model_type": inner_type}
    settings.update(_OVERRIDES.get(model_type, {}))
    return settings


def tiny_config(model_type: str, num_labels: int = 3, task: str = "classification") -> Any:
    """A small config of ``model_type`` (a key of a transformers auto mapping) with ``num_labels`` classes
    (``task``: "classification", "segmentation" or "detection": their heads read other stages)."""
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    labels = {i: f"thing{i}" for i in range(num_labels)}
    settings = _small_settings(config_class, model_type)
    if task == "segmentation":
        settings.update(_SEGMENTATION.get(model_type, {}))
    elif task == "detection":
        settings.update(_DETECTION.get(model_type, {}))
    return config_class(**settings, id2label=labels, label2id={v: k for k, v in labels.items()})


def segmentation_architectures() -> list[tuple[str, str]]:
    """(model_type, class name) for every semantic segmenter in the installed transformers' auto mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

    return [(t, n) for t, n in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.items() if isinstance(n, str)]


def detection_architectures() -> list[tuple[str, str]]:
    """(model_type, class name) for every object detector in the installed transformers' auto mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    return [(t, n) for t, n in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.items() if isinstance(n, str)]


def classification_architectures() -> list[tuple[str, str]]:
    """(model_type, class name) for every image classifier in the installed transformers' auto mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    pairs = []
    for model_type, names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
        for name in (names if isinstance(names, (tuple, list)) else (names,)):
            pairs.append((model_type, name))
    return pairs


def _tiny_processor(model_type: str) -> Any:
    """The architecture's image processor at IMAGE_SIZE, or None when transformers has none for it."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if isinstance(names, dict):  # transformers 5: {"pil": ..., "torchvision": ...}
        names = (names.get("pil"), names.get("torchvision"))
    elif isinstance(names, str):
        names = (names,)
    for name in names or ():
        processor_class = getattr(transformers, name, None) if name else None
        if processor_class is None:
            continue
        for size in ({"height": IMAGE_SIZE, "width": IMAGE_SIZE}, {"shortest_edge": IMAGE_SIZE}):
            try:
                return processor_class(size=size, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                       do_center_crop=False)
            except Exception:  # this processor takes the other form of size
                continue
    return None


def save_tiny(model_type: str, class_name: str, folder: str | Path, num_labels: int = 3, seed: int = 0) -> Path:
    """Build ``class_name`` tiny and random from its config and ``save_pretrained`` it into ``folder``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    task = "segmentation" if "Segmentation" in class_name else "detection" if "Detection" in class_name \
        else "classification"
    config = tiny_config(model_type, num_labels, task)
    model = getattr(transformers, class_name)(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    processor = _tiny_processor(model_type)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder
