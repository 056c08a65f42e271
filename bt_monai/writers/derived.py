"""What a derived DICOM object (the SEG, the SR) takes from its source series: the patient, study and series
attributes of the source headers, each made to conform to its value representation (:func:`source_headers`),
its SeriesNumber and its SeriesDescription.

Real exports carry values their VR does not allow (``StudyDate`` ``2001-01-01``, ``StudyTime`` ``10:30:00``,
an anonymizer's ``00000000``, a 20-character AccessionNumber, a name in Latin-1 under the default character
set). highdicom refuses some of them (no SEG, no SR) and copies the others into objects a validator rejects.
So every attribute the SEG or SR copies goes through one rule here, the same for both objects:

- a value that does not conform is **repaired** where its meaning is certain (``2001-01-01`` -> ``20010101``,
  ``10:30:00`` -> ``103000``, ``45Y`` -> ``045Y``, ``male`` -> ``M``, a line break at the end of a name);
- otherwise it is **dropped**: emptied when the attribute is Type 2 (present, possibly empty), left out when
  it is Type 3 (optional);
- a Type 1 UID the SEG needs and the source lacks (``FrameOfReferenceUID``; ``StudyInstanceUID`` when empty)
  is **derived** from the source SeriesInstanceUID (:func:`bt_monai.utils.derived_uid`: the same on every run),
  and the objects say so in a Contributing Equipment item of bt_monai.

A clean header is left exactly as it is, so clean sources give the same objects as before this rule existed.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bt_monai.utils import derived_uid, quiet_loggers

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from bt_monai.data.dicom import DicomFrame

__all__ = [
    "DERIVED_SERIES_OFFSET",
    "HeaderRepair",
    "SourceHeaders",
    "derived_description",
    "derived_series_number",
    "source_headers",
]

DERIVED_SERIES_OFFSET = {"seg": 1000, "sr": 2000}
"""A derived series is numbered its source's SeriesNumber plus this, so viewers list it beside its source."""

_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"  # the attribute table used for a source of a SOP class highdicom lacks

# Type 2 attributes (present, possibly empty) of the modules a SEG copies from its source; some exports omit them.
_TYPE2_FOR_SEG = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)

# Copied besides the Patient and Study modules (keyword: Type): the SEG's Frame of Reference module, and the
# source's equipment, which highdicom copies into a Contributing Equipment item ("acquisition equipment").
_ALSO_COPIED = {
    "FrameOfReferenceUID": "1",
    "PositionReferenceIndicator": "2",
    "Manufacturer": "2",
    "ManufacturerModelName": "3",
    "SoftwareVersions": "3",
    "DeviceSerialNumber": "3",
    "InstitutionName": "3",
    "InstitutionalDepartmentName": "3",
    "InstitutionAddress": "3",
    "StationName": "3",
    "AcquisitionDateTime": "3",
    "AcquisitionDate": "3",
    "AcquisitionTime": "3",
}

# Type 1 UIDs a SEG or SR cannot be made without: derived when the source lacks them (absent or empty). An
# invalid StudyInstanceUID is kept: it is what places the objects into their study (the server's, too).
_DERIVED_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID")
_REPLACED_WHEN_INVALID = ("FrameOfReferenceUID",)
_KEPT_WHEN_INVALID = ("StudyInstanceUID",)

_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_CHARACTER_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}  # the VRs whose characters the character set decides
_LONG_TEXT_VRS = {"LT", "ST", "UT"}  # may hold line breaks and tabs; leading spaces are significant
# C0, DEL and C1 control characters but ESC (it switches character sets under ISO 2022 code extensions) ...
_SHORT_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f-\x9f]")
_LONG_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f-\x9f]")  # ... and but TAB, LF, FF, CR
_FORMAT = {
    "AE": "an application entity title",
    "AS": "an age nnnD, nnnW, nnnM or nnnY",
    "CS": "a code string (A-Z, 0-9, space, _)",
    "DA": "a date YYYYMMDD",
    "DS": "a decimal number",
    "DT": "a date and time YYYYMMDDHHMMSS.FFFFFF&ZZXX",
    "IS": "an integer",
    "TM": "a time HHMMSS.FFFFFF",
    "UI": "a UID (digits and dots)",
}
_SEXES = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}  # highdicom takes M, F, O only
_ENUMERATED = {  # the copied CS attributes with enumerated values (PS3.3), which validators check
    "PatientSex": ("M", "F", "O"),
    "PatientIdentityRemoved": ("YES", "NO"),
    "QualityControlSubject": ("YES", "NO"),
    "SmokingStatus": ("YES", "NO", "UNKNOWN"),
    "PatientSexNeutered": ("ALTERED", "UNALTERED"),
    "TypeOfPatientID": ("TEXT", "RFID", "BARCODE"),
}


@dataclass(frozen=True)
class HeaderRepair:
    """One change a source header needed before a SEG or SR could copy it.

    ``action``: ``repaired`` (``value`` is the conforming value of the same meaning), ``emptied`` (a Type 2
    attribute, now empty), ``removed`` (a Type 3 attribute, left out) or ``derived`` (a Type 1 UID the source
    lacks, ``value`` derived from the source SeriesInstanceUID). ``reason``: why the original does not conform.
    """

    attribute: str
    original: str
    action: str
    value: str | None
    reason: str

    def as_dict(self) -> dict[str, str | None]:
        """The entry of ``summary.json``'s ``header_repairs``."""
        return {
            "attribute": self.attribute,
            "original": self.original,
            "action": self.action,
            "value": self.value,
            "reason": self.reason,
        }


@dataclass
class SourceHeaders:
    """The headers a SEG or SR is made from (one per source instance, conforming) and what they needed.

    ``datasets``: path -> header (no pixel data), in the frames' order; ``repairs``: each change once, in the
    order made (several instances with the same value give one entry).
    """

    datasets: dict[Path, Any]
    repairs: list[HeaderRepair] = field(default_factory=list)

    def derivation_note(self, keywords: tuple[str, ...] = _DERIVED_UIDS) -> str | None:
        """What bt_monai derived among ``keywords``, as a Contributing Equipment description (None: nothing)."""
        derived = [r.attribute for r in self.repairs if r.action == "derived" and r.attribute in keywords]
        if not derived:
            return None
        return (
            f"bt_monai derived {', '.join(derived)} (the source images have none, or an invalid one): a UID "
            "derived from their SeriesInstanceUID, the same on every run"
        )

    def contributing_equipment(self, keywords: tuple[str, ...] = _DERIVED_UIDS) -> list | None:
        """The Contributing Equipment item that records what was derived among ``keywords``, or None."""
        note = self.derivation_note(keywords)
        if note is None:
            return None  # a clean source: the object is made exactly as without this rule
        import highdicom as hd
        from pydicom.sr.codedict import codes

        from bt_monai import __version__

        return [
            hd.ContributingEquipment(
                manufacturer="bt_monai",
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name="bt_monai brain tumor segmentation",
                software_versions=__version__,
                contribution_description=note,
            )
        ]

    @property
    def default_character_set(self) -> bool:
        """Whether the first header declares no character set other than the default repertoire (ASCII)."""
        return _is_default_character_set(next(iter(self.datasets.values())).get("SpecificCharacterSet"))


def derived_series_number(source_attributes: dict[str, Any], kind: str) -> int:
    """The SeriesNumber of the ``kind`` (``seg`` or ``sr``) object of a source series (IS, at most 2**31 - 1).

    A missing or unreadable source SeriesNumber counts as 0.
    """
    try:
        source = abs(int(source_attributes.get("SeriesNumber") or 0))
    except (TypeError, ValueError):
        source = 0
    return min(DERIVED_SERIES_OFFSET[kind] + source, 2**31 - 1)


def derived_description(prefix: str, source_attributes: dict[str, Any], headers: SourceHeaders) -> str:
    """The SeriesDescription (LO) of a derived object: ``prefix`` and the source's SeriesDescription, at most
    64 characters, without what an LO may not hold (control characters, backslashes, and non-ASCII characters
    when the objects declare no character set)."""
    text = f"{prefix} {source_attributes.get('SeriesDescription', '')}"
    text = _SHORT_CONTROL.sub(" ", text.replace("\\", " "))
    if headers.default_character_set:
        text = text.encode("ascii", "ignore").decode("ascii")
    return text.strip()[:64]


def source_headers(frames: list[DicomFrame]) -> SourceHeaders:
    """The headers of the instances of ``frames`` (each once), made fit to be copied by a SEG or SR.

    Missing Type 2 attributes are added empty; the attributes the objects copy are repaired, dropped or derived
    (the module docstring); :attr:`SourceHeaders.repairs` lists each change.
    """
    import pydicom

    paths = list(dict.fromkeys(f.path for f in frames))
    with quiet_loggers("pydicom"):
        headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in paths}
        repairs: dict[HeaderRepair, None] = {}  # ordered, each once
        for header in headers.values():
            for keyword in _TYPE2_FOR_SEG:
                if keyword not in header:
                    setattr(header, keyword, "")
            for repair in _conform(header):
                repairs.setdefault(repair)
    return SourceHeaders(headers, list(repairs))


# --- the rule ---------------------------------------------------------------------------------------------------


@cache
def _copied_attributes(sop_class_uid: str) -> dict[str, str]:
    """Keyword -> Type of the top-level attributes a SEG or SR copies from a source of ``sop_class_uid``.

    The Patient and Study modules of the source's IOD, from the tables highdicom itself copies them by (so the
    two cannot disagree; highdicom is pinned to a minor version), and :data:`_ALSO_COPIED`.
    """
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    iods = get_sop_class_iod_map()
    iod = iods.get(sop_class_uid, iods[_MR_IMAGE])
    attributes = get_module_attribute_map()
    copied = {}
    for module in get_iod_module_map()[iod]:
        if module["ie"] in ("Patient", "Study"):
            for item in attributes[module["key"]]:
                if not item["path"]:
                    copied[str(item["keyword"])] = str(item["type"])
    return {**copied, **_ALSO_COPIED}


def _conform(header: Dataset) -> list[HeaderRepair]:
    """Make the attributes of ``header`` that a SEG or SR copies conform to their VR (in place); the changes."""
    copied = _copied_attributes(str(header.get("SOPClassUID", _MR_IMAGE)))
    present = {}
    for keyword in copied:
        try:
            present[keyword] = header[keyword]  # decoded now, with the character set the source declares
        except KeyError:
            continue
        except Exception:  # a value pydicom cannot even convert: dropped below
            present[keyword] = None
    repairs = _conform_character_set(header)
    charset = tuple(_texts(header.get("SpecificCharacterSet") or ""))
    for keyword, element in present.items():
        repair = _conform_element(header, keyword, element, copied[keyword], charset)
        if repair is not None:
            repairs.append(repair)
    series_uid = str(header.get("SeriesInstanceUID", ""))
    for keyword in _DERIVED_UIDS:
        if keyword not in header or not str(header[keyword].value or "").strip():
            original = "" if keyword not in header else str(header[keyword].value or "")
            repairs.append(
                _derive(header, keyword, series_uid, original, "absent" if keyword not in header else "empty")
            )
    return repairs


def _conform_element(
    header: Dataset, keyword: str, element, kind: str, charset: tuple[str, ...]
) -> HeaderRepair | None:
    """Repair, drop or derive one attribute whose value does not conform (None when it conforms)."""
    from pydicom.datadict import dictionary_VM

    if element is None:
        return _drop(header, keyword, kind, "", "a value pydicom cannot read")
    if element.VR not in _TEXT_VRS or element.value is None:
        return None  # sequences, binary and numeric VRs: nothing highdicom converts
    values = _texts(element.value)
    original = "\\".join(values)
    if not values:
        return None
    problem = _problem(keyword, element.VR, values, dictionary_VM(keyword), charset)
    if problem is None or keyword in _KEPT_WHEN_INVALID:
        return None
    repaired = [_repaired(keyword, element.VR, v) for v in values]
    if _problem(keyword, element.VR, repaired, dictionary_VM(keyword), charset) is None:
        element.value = repaired[0] if len(repaired) == 1 else repaired
        return HeaderRepair(keyword, original, "repaired", "\\".join(repaired), problem)
    if keyword in _REPLACED_WHEN_INVALID:
        return _derive(header, keyword, str(header.get("SeriesInstanceUID", "")), original, problem)
    return _drop(header, keyword, kind, original, problem)


def _drop(header: Dataset, keyword: str, kind: str, original: str, reason: str) -> HeaderRepair:
    """Empty a Type 2 attribute (2C too), leave out any other (Type 3; Type 1 in an optional module)."""
    if kind in ("2", "2C"):
        setattr(header, keyword, "")
        return HeaderRepair(keyword, original, "emptied", "", reason)
    del header[keyword]
    return HeaderRepair(keyword, original, "removed", None, reason)


def _derive(header: Dataset, keyword: str, series_uid: str, original: str, reason: str) -> HeaderRepair:
    """A Type 1 UID derived from the series' UID: every instance of the series, and every run, gets the same."""
    value = derived_uid("bt_monai", keyword, series_uid)
    setattr(header, keyword, value)
    return HeaderRepair(keyword, original, "derived", value, reason)


def _texts(value) -> list[str]:
    """The values of an element as text (a multi-valued element gives several)."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def _problem(keyword: str, vr: str, values: list[str], vm: str, charset: tuple[str, ...]) -> str | None:
    """Why ``values`` of an attribute of VR ``vr`` and multiplicity ``vm`` do not conform under the character set
    ``charset`` (the terms of SpecificCharacterSet); None when they do."""
    from pydicom import config
    from pydicom.valuerep import MAX_VALUE_LEN, validate_value

    if vm == "1" and len(values) > 1:
        return "several values where one is allowed"
    for value in values:
        if vr in _CHARACTER_VRS and _is_default_character_set(charset) and not value.isascii():
            return "characters beyond ASCII, and the source declares no SpecificCharacterSet"
        control = _LONG_CONTROL if vr in _LONG_TEXT_VRS else _SHORT_CONTROL
        escapes = any(term.startswith("ISO 2022") for term in charset)  # ESC only switches ISO 2022 sets
        if vr in _CHARACTER_VRS and (control.search(value) or ("\x1b" in value and not escapes)):
            return "control characters"
        try:
            validate_value(vr, value, config.RAISE)
        except (ValueError, TypeError):
            limit = MAX_VALUE_LEN.get(vr)
            if vr == "PN" and any(len(group) > 64 for group in value.split("=")):
                return "a component group longer than 64 characters, the most a PN holds"
            if limit and len(value) > limit:
                return f"longer than {limit} characters, the most a {vr} holds"
            return f"not {_FORMAT.get(vr, f'a valid {vr}')}"
        problem = _semantic_problem(keyword, vr, value)
        if problem:
            return problem
    return None


def _semantic_problem(keyword: str, vr: str, value: str) -> str | None:
    """What pydicom's format check lets through but highdicom or the standard refuses."""
    from pydicom.valuerep import DA, DT, TM

    if not value:
        return None
    if vr == "PN":
        groups = value.split("=")
        if len(groups) > 3 or any(len(g.split("^")) > 5 for g in groups):
            return "more than 5 name components or 3 component groups"
    if vr in ("DA", "TM", "DT"):
        try:
            with quiet_loggers("pydicom"):
                {"DA": DA, "TM": TM, "DT": DT}[vr](value)
        except (ValueError, TypeError, OverflowError):
            return f"not {_FORMAT[vr]}"
    if keyword in _ENUMERATED and value not in _ENUMERATED[keyword]:
        return f"not one of {', '.join(_ENUMERATED[keyword])}"
    return None


def _repaired(keyword: str, vr: str, value: str) -> str:
    """``value`` in its VR's format where the meaning is certain (checked again by the caller), else itself."""
    text = value.rstrip() if vr in _LONG_TEXT_VRS else value.strip()
    if vr == "DA":
        if m := re.fullmatch(r"(\d{4})[-./](\d{1,2})[-./](\d{1,2})", text):
            return f"{m[1]}{int(m[2]):02d}{int(m[3]):02d}"
    elif vr == "TM":
        if m := re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?", text):
            return f"{int(m[1]):02d}{m[2]}{m[3] or ''}{m[4] or ''}"
    elif vr == "DT":
        return _repaired_datetime(text)
    elif vr == "AS":
        if m := re.fullmatch(r"(\d{1,3})\s*([DWMY])", text, re.IGNORECASE):
            return f"{int(m[1]):03d}{m[2].upper()}"
    elif vr == "CS":
        text = text.upper()
        if keyword == "PatientSex":
            return _SEXES.get(text, text)
    elif vr == "UI":
        return text.strip("\x00 ")
    return text


def _repaired_datetime(text: str) -> str:
    """An ISO 8601-like date and time (``2001-01-01T10:30:00+01:00``, ``Z``) as a DT, else ``text`` itself."""
    m = re.fullmatch(
        r"(\d{4})-?(\d{2})-?(\d{2})(?:[T ]?(\d{2}):?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?\s*(Z|[+-]\d{2}:?\d{2})?",
        text,
    )
    if not m:
        return text
    zone = "+0000" if m[8] == "Z" else (m[8] or "").replace(":", "")
    return "".join(part or "" for part in m.groups()[:7]) + zone


def _is_default_character_set(value) -> bool:
    """Whether a SpecificCharacterSet value declares only the default repertoire (or is absent)."""
    return not value or all(term in ("", "ISO_IR 6", "ISO 2022 IR 6") for term in _texts(value))


def _conform_character_set(header: Dataset) -> list[HeaderRepair]:
    """A SpecificCharacterSet highdicom does not know (``UTF-8``, ``latin1``) becomes the term of the encoding
    pydicom decoded the values with (the meaning is what was read); one pydicom could not read either is left
    out (the values were read as the default repertoire, and those beyond ASCII are then dropped)."""
    import highdicom as hd
    from pydicom.charset import convert_encodings, default_encoding

    if "SpecificCharacterSet" not in header or not header.SpecificCharacterSet:
        return []
    terms = _texts(header.SpecificCharacterSet)
    known = {v.value for v in hd.SpecificCharacterSetValues}
    if all(term in known or (term == "" and i == 0 and len(terms) > 1) for i, term in enumerate(terms)):
        return []
    original = "\\".join(terms)
    with quiet_loggers("pydicom"):
        encodings = convert_encodings(terms)
    mapped = [None if e == default_encoding else _term_of_encoding(e) for e in encodings]
    if len(mapped) == 1 and mapped[0] is not None:
        header.SpecificCharacterSet = mapped[0]
        return [HeaderRepair("SpecificCharacterSet", original, "repaired", mapped[0], "not a defined term")]
    del header.SpecificCharacterSet
    return [HeaderRepair("SpecificCharacterSet", original, "removed", None, "not a defined term")]


def _term_of_encoding(encoding: str) -> str | None:
    """The DICOM defined term (single-byte, without code extensions) of a Python encoding, or None."""
    from pydicom.charset import python_encoding

    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return None
    for term, python_name in python_encoding.items():
        if term and not term.startswith("ISO 2022") and term != "ISO_IR 6" and codecs.lookup(python_name).name == name:
            return term
    return None
