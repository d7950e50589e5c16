"""An independent reading of DVS Gesture samples (numpy and Python integers; no edgesnn, no tonic):
the reference the event-data fuzz audits compare ``load_event_dataset``'s frames with.

Times x 1000 in microseconds, ``T`` bins of width ``(max - min) // T`` from the first event,
half-open (the events at the last timestamp fall past the last bin; a span shorter than ``T``
microseconds bins nothing: tonic 1.7's ``ToFrame(n_time_bins=T)``), x and y divided by 4 rounding
down (``Downsample(spatial_factor=0.25)`` then the ``int16`` cast), counts saturated at 255,
samples in path order, labels from the file names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

# the first user folder of the fabricated dataset (test_datasets_events.make_dvsgesture)
USER = ("DVSGesture", "ibmGestureTrain", "user01_fluorescent")


def ref_frames(a: np.ndarray, steps: int) -> np.ndarray:
    """One DVS Gesture sample's frames ``[T, 2, 32, 32]`` uint8, computed with Python integers."""
    out = np.zeros((steps, 2, 32, 32), np.int64)
    if len(a) == 0:
        return out.astype(np.uint8)
    t = [int(v) * 1000 for v in a[:, 3].tolist()]
    t0 = min(t)
    width = (max(t) - t0) // steps
    if width == 0:
        return out.astype(np.uint8)
    for x, y, p, ti in zip(a[:, 0].tolist(), a[:, 1].tolist(), a[:, 2].tolist(), t):
        b = (ti - t0) // width
        if b < steps:
            out[b, int(p), int(y) // 4, int(x) // 4] += 1
    return np.minimum(out, 255).astype(np.uint8)


def ref_split(root: Path, split: str, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """One split's frames ``[N, T, 2, 32, 32]`` uint8 and labels ``[N]``, samples in path order."""
    files = sorted((str(f) for f in (root / "DVSGesture" / split).glob("*/*.npy")))
    x = np.stack([ref_frames(np.load(f), steps) for f in files])
    return x, np.array([int(os.path.basename(f)[:-4]) for f in files])
