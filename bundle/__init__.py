"""The bundles shipped with bt_monai, installed as the package data ``bt_monai.shipped_bundles``.

Each sub-folder is a self-contained MONAI bundle; this file only makes the folder an importable resource
package (``importlib.resources``). Find, list or copy them with ``bt-monai bundle ...`` or ``bt_monai.bundle``.
"""
