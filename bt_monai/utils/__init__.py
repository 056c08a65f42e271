"""Small helpers every layer may use (the bottom layer: they import nothing else of bt_monai)."""

from bt_monai.utils.files import (
    atomic_write,
    atomic_write_bytes,
    inside,
    is_temporary,
    make_temporary_dir,
    printable,
    remove_stale_temporaries,
    replace_folder,
    safe_name,
    write_csv,
)
from bt_monai.utils.quiet import quiet_loggers
from bt_monai.utils.state import unwrap_state_dict
from bt_monai.utils.uids import derived_uid

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "derived_uid",
    "inside",
    "is_temporary",
    "make_temporary_dir",
    "printable",
    "quiet_loggers",
    "remove_stale_temporaries",
    "replace_folder",
    "safe_name",
    "unwrap_state_dict",
    "write_csv",
]
