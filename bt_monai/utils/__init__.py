"""Small helpers every layer may use (the bottom layer: they import nothing else of bt_monai)."""

from bt_monai.utils.cache import CACHE_DIR_ENV, cache_dir
from bt_monai.utils.distributed import gather_in_sampler_order, is_distributed, is_main_process, rank, world_size
from bt_monai.utils.errors import error_summary
from bt_monai.utils.files import (
    atomic_write,
    atomic_write_bytes,
    file_stamp,
    final_path,
    inside,
    is_temporary,
    make_temporary_dir,
    printable,
    relative_path,
    remove_stale_temporaries,
    replace_folder,
    safe_name,
    write_csv,
)
from bt_monai.utils.quiet import quiet_loggers
from bt_monai.utils.state import unwrap_state_dict
from bt_monai.utils.uids import derived_uid

__all__ = [
    "CACHE_DIR_ENV",
    "atomic_write",
    "atomic_write_bytes",
    "cache_dir",
    "derived_uid",
    "error_summary",
    "file_stamp",
    "final_path",
    "gather_in_sampler_order",
    "inside",
    "is_distributed",
    "is_main_process",
    "is_temporary",
    "make_temporary_dir",
    "printable",
    "quiet_loggers",
    "rank",
    "relative_path",
    "remove_stale_temporaries",
    "replace_folder",
    "safe_name",
    "unwrap_state_dict",
    "world_size",
    "write_csv",
]
