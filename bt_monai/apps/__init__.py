"""Applications on top of the core: folder inference (and, later, evaluation reports and DICOM)."""
