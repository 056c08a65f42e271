"""DICOM UIDs derived from names: the same inputs give the same UID, any other input another one."""

from __future__ import annotations

import uuid

__all__ = ["derived_uid"]

# The namespace of bt_monai's name-based UUIDs (itself uuid5 of the URL namespace and the package name).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/bt_monai/derived-uid")


def derived_uid(*parts: str) -> str:
    """A ``2.25.<integer>`` UID (DICOM PS3.5 B.2, UUID-derived) of a name-based (version 5, SHA-1) UUID of ``parts``.

    Deterministic: a re-run with the same ``parts`` gives the same UID, so an object made again is the same
    object (a server that has it stores no duplicate). pydicom's ``generate_uid(prefix=None, ...)`` cannot do
    this: with no prefix it returns a random UUID and ignores ``entropy_srcs``. At most 44 characters.
    """
    name = "\x1f".join(str(p) for p in parts)  # a separator no UID or hash contains: ("a", "bc") != ("ab", "c")
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"
