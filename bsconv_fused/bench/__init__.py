"""The benchmark suite: shapes, contenders, timing, analytic bounds, reports, and the GPU-free traffic counter.

Entry point: ``python -m bsconv_fused`` (see bsconv_fused/__main__.py). Nothing in the library imports this package.
"""
