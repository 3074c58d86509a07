"""Host side of the torchvision_image family: any torchvision classification model by name.

NumPy + Pillow only, so it runs on an Ascend host without torch or torchvision. Everything but the `model` keys
is the image families' shared host side (models/image_host.py). The preprocessing (resize, crop, interpolation,
mean/std of the weights' `transforms()`) and the class names (`meta["categories"]`, with ImageNet WordNet ids)
come from torchvision's weights enum, resolved by `make export` into build/<model>/preprocess.json.

A config: `model: {architecture: mobilenet_v2, weights: IMAGENET1K_V1}`, the input shape [batch, 3, H, W] (H, W:
the weights' crop size) and the output shape [batch, N] (N: the classes); `make export` checks both against the
weights and names the right values when they differ.
"""
from __future__ import annotations

from models.image_host import (CAPABILITIES, PREPARE_THREADS, aipp_source, HEAD_SCHEMA, POSTPROCESS_SCHEMA, PREPROCESS_SCHEMA,  # noqa: F401
                               capabilities, check_config, compare_gate, data_config, find_sources, generate_sources,
                               host_artifacts, label_ids, labels, postprocess, prepare, random_input, resolved,
                               run_summary, softmax, task_gate, task_metrics)
from pipeline.schema import Opt

MODEL_SCHEMA = {
    "architecture": Opt(str, help="a torchvision classification model, e.g. mobilenet_v2 "
                                  "(torchvision.models.list_models(module=torchvision.models))"),
    "weights": Opt(str, "DEFAULT", help="a member of its weights enum, e.g. IMAGENET1K_V1 "
                                        "(torchvision.models.get_model_weights(architecture)); DEFAULT: torchvision's"),
    **HEAD_SCHEMA,
}
