"""The MNI152 2009a T1 template that nilearn ships (offline): the demo and benchmark volume."""

from __future__ import annotations

import numpy as np

from ldp_med.io.volume import Volume


def mni152_template(resolution: int = 2) -> Volume:
    """The MNI152 ICBM 2009a symmetric T1 template at ``resolution`` mm (2 mm: 99x117x95), float32.

    Intensities are nilearn's (uint8 0-255, cast to float32); the affine is the template's.
    """
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=resolution)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    return Volume(data=data, affine=np.asarray(img.affine, np.float64),
                  meta={"source": f"nilearn MNI152 2009a T1 template, {resolution} mm", "qform_code": 4, "sform_code": 4})
