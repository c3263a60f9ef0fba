"""Datasets: generation with the ``pdes`` solvers into self-describing HDF5, the torch Dataset,
normalisation statistics stored with the data, and PDEBench import."""

from .dataset import FieldDataset
from .generate import GenerationError, generate_dataset, sample_seed
from .hdf5 import DatasetFileError, DatasetInfo, FileInUseError, read_fields, read_info
from .normalize import Normalizer
from .pdebench import import_pdebench

__all__ = ["DatasetFileError", "DatasetInfo", "FieldDataset", "FileInUseError", "GenerationError", "Normalizer",
           "generate_dataset", "import_pdebench", "read_fields", "read_info", "sample_seed"]
