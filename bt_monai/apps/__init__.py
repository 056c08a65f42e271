"""Applications: they orchestrate the layers below and hold no formats or metrics of their own.

- :mod:`~bt_monai.apps.infer`: ``bt-monai infer`` over slice files (masks, CSV, resumable runs);
- :mod:`~bt_monai.apps.dicom`: ``bt-monai infer`` over DICOM folders and DICOMweb studies, series by series (SEG,
  SR, NIfTI, overlays), one module per step;
- :mod:`~bt_monai.apps.evaluate`: ``bt-monai evaluate`` (metrics and the report of a dataset with masks);
- :mod:`~bt_monai.apps.curves`: ``bt-monai curves`` (a bundle run's TensorBoard logs as a PNG);
- :mod:`~bt_monai.apps.label`: MONAI Label support (datastore, ``tumor_probability`` strategy, app);
- :mod:`~bt_monai.apps.cli`: the ``bt-monai`` command line over all of them (options, commands, exit statuses).
"""
