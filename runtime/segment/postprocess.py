"""Finishing a mask at the clip's display size: holes filled, the edge grown or shrunk.

SAM 2's masks follow an object's edge closely; motion blur, hair and soft shadows fall just outside
them, and a removal leaves a faint line there. Growing the mask a few pixels covers it (the remover
dilates again at its own working size). Holes (background the mask encloses) are filled: for removal
an unmasked island inside an object is far more often a miss of the tracker than background to keep.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import RemoverError
from runtime.segment.options import INSTALL


def disk(radius: int) -> np.ndarray:
    """bool [2r+1, 2r+1]: the pixels within `radius` of the centre (Euclidean)."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def finish_mask(mask: np.ndarray, grow: int, fill_holes: bool) -> np.ndarray:
    """bool [H, W]: holes filled (when asked), then every pixel within `grow` pixels of the mask added
    (grow > 0) or every pixel within -grow pixels of the background removed (grow < 0)."""
    try:
        from scipy import ndimage  # the [segment] extra: imported when a mask is finished
    except ImportError:
        raise RemoverError(INSTALL) from None
    if fill_holes and mask.any():
        mask = ndimage.binary_fill_holes(mask)
    if grow > 0:
        mask = ndimage.binary_dilation(mask, structure=disk(grow))
    elif grow < 0:
        mask = ndimage.binary_erosion(mask, structure=disk(-grow), border_value=1)
    return mask
