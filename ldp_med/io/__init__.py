"""File I/O: NIfTI, FreeSurfer MGH/MGZ, MINC, DICOM series and the k-space HDF5 container, with atomic writes."""

from ldp_med.io.dicom import load_dicom
from ldp_med.io.dicom_out import save_dicom
from ldp_med.io.kspace import KSpaceData, load_kspace, save_kspace
from ldp_med.io.loaders import is_kspace_file, load_volume, save_output, save_volume
from ldp_med.io.mgh import load_mgh, save_mgh
from ldp_med.io.minc import load_minc
from ldp_med.io.nifti import load_nifti, save_nifti
from ldp_med.io.volume import Volume, check_volume_array

__all__ = [
    "Volume",
    "check_volume_array",
    "load_nifti",
    "save_nifti",
    "load_mgh",
    "save_mgh",
    "load_minc",
    "load_dicom",
    "save_dicom",
    "load_volume",
    "save_volume",
    "save_output",
    "is_kspace_file",
    "KSpaceData",
    "load_kspace",
    "save_kspace",
]
