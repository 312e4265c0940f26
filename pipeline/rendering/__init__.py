"""Rendering: feature maps to pictures (colour tables, PNG, grids, overlays, PCA), lazily. No torch.

from pipeline.rendering import colorize
rgb = colorize("out.h5", "chelsea.jpg", stage=2, channel=7)   # (H, W, 3) uint8
"""

from .run import RenderConfig, RenderSummary, colorize, default_out_dir, render

__all__ = ["RenderConfig", "RenderSummary", "colorize", "default_out_dir", "render"]
