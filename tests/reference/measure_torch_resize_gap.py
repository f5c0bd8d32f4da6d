"""Measure how far torch's antialiased bicubic resize (what transformers 5's torchvision video
processors use) lands from Pillow's bicubic (what descore_sdk.preprocess and the 4.57 reference use).

Not a test: torchvision itself does not load here, so this calls the torch kernel that torchvision's
`resize` dispatches to for uint8 bicubic (cast to float32, `interpolate(..., antialias=True)`, clamp,
round). Prints the uint8 disagreement over frames of the sample videos, for the numbers quoted in
descore_sdk/preprocess.py's "Resize parity" section.

    OMP_NUM_THREADS=1 python tests/reference/measure_torch_resize_gap.py [VIDEO_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import torch

from descore_sdk.preprocess import resize_frame, smart_resize

REPO_ROOT = Path(__file__).resolve().parents[2]


def torch_bicubic_aa(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return y.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def main(video_dir: Path) -> None:
    torch.set_num_threads(1)
    gaps = []
    for path in sorted(video_dir.glob("*.mp4")):
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(12), container.decode(video=0))][::4]
        height, width = frames[0].shape[:2]
        for factor in (28, 32):
            target = smart_resize(height, width, factor, 4 * factor * factor, 448 * 448)
            for frame in frames:
                pil = resize_frame(frame, *target).astype(np.int16)
                gaps.append(np.abs(pil - torch_bicubic_aa(frame, *target).astype(np.int16)).ravel())
    gap = np.concatenate(gaps)
    print(
        f"{gap.size} values: mean {gap.mean():.3f} levels, identical {(gap == 0).mean():.1%}, "
        f"within 1 level {(gap <= 1).mean():.4%}, max {gap.max()}"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT.parent / "shared" / "data" / "videoalign_examples" / "videos")
