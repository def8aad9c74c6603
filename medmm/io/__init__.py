"""Readers of medical files into plain numpy / pandas objects (no torch).

Every reader raises a :class:`MedmmInputError` subclass on bad input, naming the file.
"""

from medmm.io.dicom import DicomImage, read_dicom
from medmm.io.ecg import ECGRecord, bandpass_ecg, read_dicom_ecg, read_ecg, read_wfdb, resample_ecg, select_leads
from medmm.io.errors import CorruptFileError, InconsistentDataError, MedmmInputError
from medmm.io.raster import RasterImage, check_raster, raster_format, read_raster
from medmm.io.reports import Report, read_report, split_sections
from medmm.io.table import Table, read_gene_groups, read_table
from medmm.io.volume import Volume, read_dicom_series, read_nifti
from medmm.io.wsi import FeatureBag, WholeSlide, feature_bag, read_wsi

__all__ = [
    "CorruptFileError",
    "DicomImage",
    "ECGRecord",
    "FeatureBag",
    "InconsistentDataError",
    "MedmmInputError",
    "RasterImage",
    "Report",
    "Table",
    "Volume",
    "WholeSlide",
    "bandpass_ecg",
    "check_raster",
    "feature_bag",
    "raster_format",
    "read_dicom",
    "read_dicom_ecg",
    "read_dicom_series",
    "read_ecg",
    "read_gene_groups",
    "read_nifti",
    "read_raster",
    "read_report",
    "read_table",
    "read_wfdb",
    "read_wsi",
    "resample_ecg",
    "select_leads",
    "split_sections",
]
