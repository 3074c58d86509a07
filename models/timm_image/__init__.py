"""Host side of the generic timm image family: any timm image model by name, classifier or embedding head.

NumPy + Pillow only, so it runs on an Ascend host without torch or timm. Everything but the `model` keys is the
image families' shared host side (models/image_host.py): timm's preprocessing (its pretrained data config) and
the class names are resolved by `make export` into build/<model>/preprocess.json, which the host reads.

A config is about ten lines: `model.architecture` (a timm name, e.g. resnet50.a1_in1k), the input shape
[batch, 3, H, W] and the output shape [batch, N] (N = classes, or the embedding width), one parity case.
Shapes stay in the config so that load_config needs neither timm nor a build folder; `make export` checks
them against the timm model and names the right values when they differ.
"""
from __future__ import annotations

from models.image_host import (CAPABILITIES, PREPARE_THREADS, aipp_source, HEAD_SCHEMA, POSTPROCESS_SCHEMA, PREPROCESS_SCHEMA,  # noqa: F401
                               capabilities, check_config, compare_gate, data_config, find_sources, generate_sources,
                               host_artifacts, label_ids, labels, postprocess, prepare, random_input, resolved,
                               run_summary, softmax, task_gate, task_metrics)
from pipeline.schema import Opt

MODEL_SCHEMA = {
    "architecture": Opt(str, help="a timm model name, e.g. resnet50.a1_in1k (timm.list_models / list_pretrained)"),
    **HEAD_SCHEMA,
    "fused_attn": Opt((bool, type(None)), None,
                      help="false: attention without F.scaled_dot_product_attention (timm's own path), for "
                           "exporters that cannot trace it; null: timm's default"),
}
