"""Static cost report: predicted lower-bound GPU times of the kernels from their compiled SASS, without a GPU.

Modules, one job each: compile (JIT-specialised compile of a Launch), sass (parse cuobjdump output, loops,
instruction classes), counts (dynamic counts from Launch.loops), machines (H100/H200/A100 throughput tables),
bounds (per-resource lower-bound times), predict (the python API), report (the layer-suite report and its CLI:
python -m bsconv_fused.bench.static). Method and sources: docs/static-cost-model.md.
"""
from .counts import LoopMismatch
from .predict import KernelPrediction, predict_launches

__all__ = ["KernelPrediction", "LoopMismatch", "predict_launches"]
