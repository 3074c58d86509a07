"""make zoo: timm and torchvision architectures and ONNX files through the same stages as `make all`, one row of
verdicts per model.

Each model gets a generated config (build/configs/<name>.yaml) and runs `make export`, `make preflight`,
`make om`, `make compare`, `make precision` (only when the fp16 gate fails; its keep_dtype fix is then put in
the config and proven by `make om compare` again) and `make bench` in its own build folder, each under a time
limit. Rows land in results/zoo/rows/<name>.json one by one (temp file, then rename); zoo.json, ZOO.md and
zoo.png are made from the rows.
"""
from pipeline.stages import ZOO_STAGES as STAGES  # noqa: E402,F401  (declared once, in pipeline/stages.py)
