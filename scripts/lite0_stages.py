"""efficientnet_lite0's five stages at 224x224, as the benchmark scripts' synthetic files use them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.records import StageInfo

STAGES = [  # (C, H, W) and stride of each stage
    StageInfo(0, "blocks.0", 16, 2, 112, 112, "forward_intermediates"),
    StageInfo(1, "blocks.1", 24, 4, 56, 56, "forward_intermediates"),
    StageInfo(2, "blocks.2", 40, 8, 28, 28, "forward_intermediates"),
    StageInfo(3, "blocks.4", 112, 16, 14, 14, "forward_intermediates"),
    StageInfo(4, "blocks.6", 320, 32, 7, 7, "forward_intermediates"),
]
