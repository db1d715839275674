"""Realistic, deterministic Defined Procedure Protocol instances for tests and benchmarks.

Every test and benchmark draws its DICOM data from here, and so does
``python -m dpp_tools samples``, so the content follows
the IODs of PS3.3 (CT / XA Defined Procedure Protocol, Protocol Approval)
closely enough that matching, storage and retrieval meet what real
protocol-management tools send:

* SOP Common, General and Enhanced General Equipment;
* Protocol Context (C.34.2): Protocol Name, Potential Scheduled Protocol,
  Requested Procedure and Reasons codes, Responsible Group, Custodial
  Organization, Predecessor Protocol, Content Creator's Name, ...;
* Clinical Trial Context (C.34.4), Patient Specification (C.34.5), Equipment
  Specification (C.34.6), Instructions (C.34.7), Patient Positioning (C.34.8);
* General Defined Acquisition, General Defined Reconstruction and Defined
  Storage (C.34.9, C.34.11, C.34.13). A *defined* protocol holds their
  *Specification* sequences (0018,991F), (0018,9933) and (0018,9935); each
  item constrains attributes of the *performed* sequences (0018,9920),
  (0018,9934) and (0018,9936) with the Attribute Value Constraint Macro
  (Table 10.25-1), located by Selector Sequence Pointer as in Table C.34.9-2;
* for approvals, the Protocol Approval Module (C.34.15) with its Assertion
  Macro items (CID 800 assertion codes).

Nothing depends on the run: a seed fixes every choice (``random.Random``
seeded with a string is stable across processes and Python versions), and
UIDs come from :func:`pydicom.uid.generate_uid` with the seed as entropy
(under pydicom's root, ``1.2.826.0.1.3680043.8.498.``).
"""

from __future__ import annotations

import functools
import io
import itertools
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, config, dcmwrite
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_description, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom.sop_class import (
    CTDefinedProcedureProtocolStorage,
    CTImageStorage,
    ProtocolApprovalStorage,
    XADefinedProcedureProtocolStorage,
)

__all__ = [
    "CHARSETS",
    "DEFAULT_REPERTOIRE",
    "KINDS",
    "SOP_CLASS_BY_KIND",
    "TRANSFER_SYNTAXES",
    "make_library",
    "make_non_dpp",
    "make_protocol",
    "to_bytes",
    "write_library",
]

#: Kinds of instance ``make_protocol`` builds, and their storage SOP classes.
SOP_CLASS_BY_KIND: dict[str, UID] = {
    "CT": CTDefinedProcedureProtocolStorage,
    "XA": XADefinedProcedureProtocolStorage,
    "APPROVAL": ProtocolApprovalStorage,
}
KINDS = tuple(SOP_CLASS_BY_KIND)

#: ``charset`` for the default repertoire (ASCII): no Specific Character Set.
DEFAULT_REPERTOIRE = ""
#: Character sets a seed chooses among when ``charset`` is None.
CHARSETS = (DEFAULT_REPERTOIRE, "ISO_IR 100", "ISO_IR 192")

#: The uncompressed transfer syntaxes ``to_bytes`` writes.
TRANSFER_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

# Sequences of the performed protocol that defined constraints point into.
ACQUISITION_ELEMENTS = BaseTag(0x00189920)
RECONSTRUCTION_ELEMENTS = BaseTag(0x00189934)
STORAGE_ELEMENTS = BaseTag(0x00189936)
CT_XRAY_DETAILS = BaseTag(0x00189325)
OUTPUT_DESTINATIONS = BaseTag(0x00404070)
DICOM_STORAGE = BaseTag(0x00404071)

# --------------------------------------------------------------------------
# Building blocks


@functools.cache
def _spec(keyword: str) -> tuple[BaseTag, str]:
    """Tag and VR of a keyword from pydicom's dictionary; a typo raises."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"not a DICOM keyword: {keyword}")
    return BaseTag(tag), dictionary_VR(tag)


def _ds(**values: Any) -> Dataset:
    """A dataset from keyword=value pairs; None leaves the attribute out.

    Elements go straight into the dict ``Dataset`` wraps, keyed by tag: about
    twice as fast as attribute assignment, which matters for 100,000-instance
    benchmark libraries.
    """
    elements: dict[BaseTag, DataElement] = {}
    for keyword, value in values.items():
        if value is not None:
            tag, vr = _spec(keyword)
            elements[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return Dataset(elements)


def _vm(values: Sequence[Any]) -> Any:
    """One value as itself, several as a list: the form pydicom reads back."""
    return values[0] if len(values) == 1 else list(values)


def _uid(*parts: object) -> str:
    """A UID determined by its parts: same parts, same UID, in any process.

    The prefix must not be None: ``generate_uid(prefix=None)`` ignores the
    entropy sources and returns a random UUID-derived "2.25." UID.
    """
    return generate_uid(
        PYDICOM_ROOT_UID, entropy_srcs=["orthanc-dpp-test-factory", *map(str, parts)]
    )


def _code_item(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    """A Code Sequence Macro item; values over 16 characters go in Long Code Value."""
    long = len(value) > 16
    return _ds(
        CodeValue=None if long else value,
        CodingSchemeDesignator=scheme,
        CodingSchemeVersion=version,
        CodeMeaning=meaning,
        LongCodeValue=value if long else None,
    )


@dataclass(frozen=True)
class Code:
    """A concept of a public coding scheme (checked against pydicom's code dictionary)."""

    value: str
    scheme: str
    meaning: str

    def item(self, version: str | None = None) -> Dataset:
        return _code_item(self.value, self.scheme, self.meaning, version)


# --------------------------------------------------------------------------
# Vocabulary. RadLex Playbook RPIDs and meanings as in the Playbook core list
# (note RPID16 is "CT Chest wo IV Contrast"; the head is RPID22); SNOMED CT
# and DCM codes as in pydicom's code dictionary (a unit test checks them).

SCT, DCM, RADLEX, UCUM = "SCT", "DCM", "RADLEX", "UCUM"


@dataclass(frozen=True)
class Region:
    """What a body region brings: anatomy, a positioning landmark, indications."""

    anatomy: Code
    landmark: Code
    reasons: tuple[Code, ...]


_TRAUMA = Code("417746004", SCT, "Traumatic injury (disorder)")
_METASTASIS = Code("128462008", SCT, "Metastasis")
_STENOSIS = Code("415582006", SCT, "stenosis")
_CIRRHOSIS = Code("19943007", SCT, "Cirrhosis of liver")
_IAM = Code("84301002", SCT, "External Auditory Meatus")
_ILIAC_CREST = Code("29850006", SCT, "Iliac Crest")
_DIAPHRAGM = Code("5798000", SCT, "Diaphragm")

_REGIONS: dict[str, Region] = {
    "HEAD": Region(
        Code("69536005", SCT, "Head"),
        _IAM,
        (
            Code("25064002", SCT, "Headache"),
            Code("230690007", SCT, "Cerebrovascular accident (disorder)"),
            Code("1386000", SCT, "Intracranial hemorrhage (disorder)"),
            _TRAUMA,
        ),
    ),
    "NECK": Region(
        Code("45048000", SCT, "Neck"), _IAM, (_STENOSIS, Code("1163043007", SCT, "Lymphoma"))
    ),
    "CHEST": Region(
        Code("816094009", SCT, "Chest"),
        Code("26493002", SCT, "Structure of jugular notch of sternum (body structure)"),
        (
            Code("267036007", SCT, "Dyspnea"),
            Code("59282003", SCT, "Pulmonary embolism"),
            Code("93880001", SCT, "Lung cancer"),
            Code("27925004", SCT, "Nodule"),
            Code("49727002", SCT, "Cough"),
        ),
    ),
    "HEART": Region(
        Code("80891009", SCT, "Heart"),
        Code("28700002", SCT, "Carina"),
        (Code("29857009", SCT, "Chest Pain"), Code("53741008", SCT, "Coronary Artery Disease")),
    ),
    "ABDOMEN": Region(
        Code("818981001", SCT, "Abdomen"),
        _DIAPHRAGM,
        (Code("386661006", SCT, "Fever"), _CIRRHOSIS, _METASTASIS),
    ),
    "ABDOMEN_PELVIS": Region(
        Code("818982008", SCT, "Abdomen and Pelvis"),
        _ILIAC_CREST,
        (Code("386103008", SCT, "Renal stone"), _METASTASIS),
    ),
    "SPINE": Region(Code("122496007", SCT, "Lumbar spine"), _ILIAC_CREST, (_TRAUMA, _METASTASIS)),
    "LOWER_LIMB": Region(
        Code("61685007", SCT, "Lower limb"),
        _ILIAC_CREST,
        (
            Code("400047006", SCT, "Peripheral vascular disease"),
            Code("16973004", SCT, "Claudication"),
        ),
    ),
    "KIDNEY": Region(
        Code("2841007", SCT, "Renal artery"),
        _DIAPHRAGM,
        (_STENOSIS, Code("85659009", SCT, "aneurysm")),
    ),
    "LIVER": Region(
        Code("10200004", SCT, "Liver"),
        _DIAPHRAGM,
        (_CIRRHOSIS, Code("264579008", SCT, "thrombosis")),
    ),
}


@dataclass(frozen=True)
class Orderable:
    """A Playbook orderable: the procedure a protocol may be scheduled for."""

    rpid: str
    meaning: str
    region: str
    contrast: str  # "none", "iv", "both" or "angio"


_CT_ORDERABLES = (
    Orderable("RPID22", "CT Head wo IV Contrast", "HEAD", "none"),
    Orderable("RPID24", "CT Head w IV Contrast", "HEAD", "iv"),
    Orderable("RPID23", "CT Head w and wo IV Contrast", "HEAD", "both"),
    Orderable("RPID373", "CT Head Angio w IV Contrast", "HEAD", "angio"),
    Orderable("RPID96", "CT Head w IV Contrast Perfusion", "HEAD", "iv"),
    Orderable("RPID37", "CT Neck wo IV Contrast", "NECK", "none"),
    Orderable("RPID39", "CT Neck w IV Contrast", "NECK", "iv"),
    Orderable("RPID379", "CT Neck Angio w IV Contrast", "NECK", "angio"),
    Orderable("RPID16", "CT Chest wo IV Contrast", "CHEST", "none"),
    Orderable("RPID18", "CT Chest w IV Contrast", "CHEST", "iv"),
    Orderable("RPID17", "CT Chest w and wo IV Contrast", "CHEST", "both"),
    Orderable("RPID147", "CT Chest w IV Contrast Pulmonary Embolus", "CHEST", "angio"),
    Orderable("RPID6001", "CT Chest wo IV Contrast Lung Parenchyma", "CHEST", "none"),
    Orderable("RPID979", "CT Heart wo IV Contrast Calcium Scoring", "HEART", "none"),
    Orderable("RPID6003", "CT Heart Coronary Arteries Angio w IV Contrast", "HEART", "angio"),
    Orderable("RPID3", "CT Abdomen wo IV Contrast", "ABDOMEN", "none"),
    Orderable("RPID5", "CT Abdomen w IV Contrast", "ABDOMEN", "iv"),
    Orderable("RPID144", "CT Abdomen/Pelvis wo IV Contrast", "ABDOMEN_PELVIS", "none"),
    Orderable("RPID145", "CT Abdomen/Pelvis w IV Contrast", "ABDOMEN_PELVIS", "iv"),
    Orderable("RPID198", "CT Abdomen/Pelvis w and wo IV Contrast", "ABDOMEN_PELVIS", "both"),
    Orderable("RPID31", "CT Lumbar Spine wo IV Contrast", "SPINE", "none"),
    Orderable("RPID10", "CT Lower Extremity Angio w and wo IV Contrast", "LOWER_LIMB", "angio"),
)

_XA_ORDERABLES = (
    Orderable("RPID6202", "XA Cerebral Artery Bilateral", "HEAD", "angio"),
    Orderable("RPID6200", "XA Cervicocerebral Arteries Bilateral", "HEAD", "angio"),
    Orderable("RPID6198", "XA Carotid Artery Bilateral", "NECK", "angio"),
    Orderable("RPID6218", "XA Pulmonary Arteries Bilateral", "CHEST", "angio"),
    Orderable("RPID6195", "XA Abdominal Aorta", "ABDOMEN", "angio"),
    Orderable("RPID6232", "XA Visceral Arteries", "ABDOMEN", "angio"),
    Orderable("RPID6220", "XA Renal Arteries Bilateral", "KIDNEY", "angio"),
    Orderable("RPID6216", "XA Portal Veins", "LIVER", "angio"),
    Orderable("RPID6239", "XA Extremity Arteries Bilateral", "LOWER_LIMB", "angio"),
)

# Responsible groups: departments and sections (CID 7030 style).
_RADIOLOGY = Code("309964003", SCT, "Radiology department (environment)")
_RESPONSIBLE: dict[str, Code] = {
    "CHEST": Code("128179", DCM, "Thoracic Radiology"),
    "HEART": Code("128172", DCM, "Cardiovascular Radiology"),
    "ABDOMEN": Code("128170", DCM, "Abdominal Radiology"),
    "ABDOMEN_PELVIS": Code("128170", DCM, "Abdominal Radiology"),
    "SPINE": Code("128175", DCM, "Musculoskeletal Radiology"),
}
_PEDIATRIC_RADIOLOGY = Code("128177", DCM, "Pediatric Radiology")
_INTERVENTIONAL = Code("708174004", SCT, "Interventional Radiology Service")
_LASER_CROSSHAIRS = Code("128151", DCM, "Laser Cross-hairs")
_RENAL_FAILURE = Code("42399005", SCT, "Renal failure")

# Protocol Approval: assertions (CID 800) and approvers' roles.
_ASSERTIONS = (
    Code("128603", DCM, "Approved for use at the institution"),
    Code("128604", DCM, "Approved for use in the clinical trial"),
    Code("128611", DCM, "Approved for experimental use"),
    Code("128613", DCM, "Eligible for reimbursement"),
    Code("128606", DCM, "Appropriate for the device"),
    Code("128623", DCM, "Disapproved for use at the institution"),
    Code("128610", DCM, "Deprecated protocol"),
)
_NEEDS_INSTITUTION = {"128603", "128623", "128613", "128614", "128615"}  # C.34.15 1C
_NEEDS_TRIAL = {"128604", "128624", "128611", "128612"}
_ROLES = (
    Code("128670", DCM, "Head of Radiology"),
    Code("128671", DCM, "Chair of Protocol Committee"),
    Code("128674", DCM, "Lead Radiologic Technologist"),
    Code("128676", DCM, "Representative of Protocol Committee"),
)

_UNITS = {
    "kV": "kilovolt",
    "mA": "milliampere",
    "ms": "millisecond",
    "s": "second",
    "mm": "millimeter",
    "mm/s": "millimeter per second",
    "mGy": "milligray",
    "mGy.cm": "milligray centimeter",
    "kg": "kilogram",
    "deg": "degree",
    "/s": "per second",
    "1": "no units",
}


@dataclass(frozen=True)
class Model:
    """Equipment as its own attributes name it."""

    manufacturer: str
    model: str
    group: str
    software: tuple[str, ...]
    localizer: str = "Fluoro"  # the vendor's name for a localizer radiograph
    kernels: tuple[str, ...] = ()


def _models(table: str) -> tuple[Model, ...]:
    """Models from a table: manufacturer | model | group | versions | localizer | kernels."""
    models = []
    for line in table.strip().splitlines():
        maker, model, group, versions, localizer, kernels = (f.strip() for f in line.split("|"))
        models.append(
            Model(
                maker, model, group, tuple(versions.split(",")), localizer, tuple(kernels.split())
            )
        )
    return tuple(models)


_CT_MODELS = _models("""
SIEMENS            | SOMATOM Force      | SOMATOM Dual Source | syngo CT VA50A         | Topogram  | Br40 Hr38 Qr40 Bv36
SIEMENS            | NAEOTOM Alpha      | NAEOTOM             | syngo CT VA40A,SOMARIS/10 | Topogram | Br40 Qr40 Bv36 Br64
SIEMENS            | SOMATOM go.Top     | SOMATOM go.         | syngo CT VA30A         | Topogram  | Br40 Hr38 Br64
GE MEDICAL SYSTEMS | Revolution Apex    | Revolution          | revo_apex.60           | Scout     | STANDARD SOFT LUNG BONE
GE MEDICAL SYSTEMS | Revolution EVO     | Revolution          | evo_sw.24              | Scout     | STANDARD SOFT DETAIL
Philips            | IQon Spectral CT   | Spectral CT         | 5.0.3,SP1              | Surview   | B C YA L
Philips            | Incisive CT        | Incisive            | 4.1.0                  | Surview   | B C YB L
CANON_MEC          | Aquilion ONE PRISM | Aquilion ONE        | V10.10SP0002           | Scanogram | FC08 FC13 FC52
CANON_MEC          | Aquilion Prime SP  | Aquilion Prime      | V8.9                   | Scanogram | FC08 FC30 FC52
UIH                | uCT 780            | uCT                 | R002,uWS-CT R005       | Topogram  | B_SOFT_B B_LUNG_B
""")  # noqa: E501
_XA_MODELS = _models("""
SIEMENS            | ARTIS icono biplane | ARTIS icono   | VE20A     | Fluoro |
SIEMENS            | Artis zee floor     | Artis zee     | VD11C     | Fluoro |
Philips            | Azurion 7 B20/15    | Azurion       | R2.2,SP3  | Fluoro |
Philips            | Allura Xper FD20    | Allura Xper   | R8.2      | Fluoro |
GE MEDICAL SYSTEMS | Discovery IGS 740   | Discovery IGS | IGS_1.2   | Fluoro |
CANON_MEC          | Alphenix Biplane    | Alphenix      | V9.10     | Fluoro |
""")
_REVIEW_STATIONS = _models("""
Lakeside Imaging IT   | Protocol Review Portal | Protocol Review | 2.4.1   | |
Northwind Informatics | DPP Governance Station | DPP Governance  | 5.0,5.0.2 | |
""")

# --------------------------------------------------------------------------
# Text by language. A character set only gets text it can encode: ISO_IR 100
# is ISO 8859-1 (no "œ" nor "€"), ISO_IR 192 is UTF-8.


@dataclass(frozen=True)
class Language:
    """Words a department writing in that language puts into its protocols."""

    regions: dict[str, str]
    contrast: dict[str, str]  # by Orderable.contrast
    population: tuple[str, ...]  # adult, pediatric
    people: tuple[str, ...]  # PN values
    reasons: tuple[str, ...]
    instructions: tuple[str, ...]
    planning: str


def _language(
    regions: str,
    contrast: str,
    population: str,
    people: str,
    reasons: str,
    instructions: str,
    planning: str,
) -> Language:
    """A Language from "|"-separated lists (regions in _REGIONS order)."""
    return Language(
        dict(zip(_REGIONS, regions.split("|"), strict=True)),
        dict(zip(("none", "iv", "both", "angio"), contrast.split("|"), strict=True)),
        tuple(population.split("|")),
        tuple(people.split("|")),
        tuple(reasons.split("|")),
        tuple(instructions.split("|")),
        planning,
    )


_LANGUAGES: dict[str, Language] = {
    "en": _language(
        "Head|Neck|Chest|Heart|Abdomen|Abdomen/Pelvis|L-Spine|Lower Limb|Renal|Liver",
        "wo IV|w IV|w/wo IV|Angio",
        "Adult|Peds",
        "Carter^Emily^^Dr.|Okafor^Chinedu|Lindqvist^Anna^M|Nguyen^Thanh^^Dr.",
        "Suspected stroke|Follow-up of known lesion|Acute trauma|Staging",
        "Remove metal objects from scan area|Arms above head|Breath-hold instruction",
        "Review annually with the protocol committee; dose targets per national DRLs.",
    ),
    "fr": _language(
        "Crâne|Cou|Thorax|Coeur|Abdomen|Abdomen-pelvis|Rachis lombaire|Membre inférieur|Rénal|Foie",
        "sans injection|avec injection|sans et avec inj.|Angio",
        "Adulte|Pédiatrie",
        "Lefèvre^Hélène^^Dr|Béranger^François|Duboeuf^Zoé",
        "Suspicion d'AVC|Bilan d'extension|Traumatisme récent",
        "Retirer les objets métalliques|Bras au-dessus de la tête",
        "Révision annuelle par le comité des protocoles ; NRD nationaux respectés.",
    ),
    "de": _language(
        "Schädel|Hals|Thorax|Herz|Abdomen|Abdomen/Becken|LWS|Untere Extremität|"
        "Nierenarterien|Leber",
        "nativ|mit KM|nativ und mit KM|Angio",
        "Erwachsene|Kinder",
        "Müller^Jürgen^^Dr. med.|Schäfer^Käthe|Groß^Björn",
        "Verdacht auf Schlaganfall|Verlaufskontrolle|Polytrauma",
        "Metallgegenstände entfernen|Arme über den Kopf",
        "Jährliche Überprüfung durch die Protokollkommission; DRW beachten.",
    ),
    "da": _language(
        "Kranium|Hals|Thorax|Hjerte|Abdomen|Abdomen/bækken|Lændecolumna|Underekstremitet|"
        "Nyrearterier|Lever",
        "uden kontrast|med kontrast|uden og med kontrast|Angio",
        "Voksen|Børn",
        "Sørensen^Søren|Jørgensen^Åse|Bækgaard^Mette",
        "Mistanke om apopleksi|Opfølgning|Traume",
        "Fjern metalgenstande|Armene over hovedet",
        "Årlig gennemgang i protokoludvalget; nationale DRL-værdier overholdes.",
    ),
    "es": _language(
        "Cráneo|Cuello|Tórax|Corazón|Abdomen|Abdomen/pelvis|Columna lumbar|Miembro inferior|"
        "Renal|Hígado",
        "sin contraste|con contraste|sin y con contraste|Angio",
        "Adulto|Pediátrico",
        "Peña^José^Ángel|Muñoz^María José|Núñez^Inés",
        "Sospecha de ictus|Control evolutivo|Traumatismo",
        "Retirar objetos metálicos|Brazos por encima de la cabeza",
        "Revisión anual por el comité de protocolos; se respetan los NRD nacionales.",
    ),
    "ja": _language(
        "頭部|頸部|胸部|心臓|腹部|腹部骨盤|腰椎|下肢|腎動脈|肝臓",
        "単純|造影|単純+造影|血管造影",
        "成人|小児",
        "Yamada^Tarou=山田^太郎=やまだ^たろう|Suzuki^Hanako=鈴木^花子=すずき^はなこ|"
        "Tanaka^Kenji=田中^健二=たなか^けんじ",
        "脳卒中疑い|経過観察|外傷",
        "金属類を外してください|両腕を挙上",
        "プロトコル委員会で年1回見直し。診断参考レベルを遵守。",
    ),
    "el": _language(
        "Εγκέφαλος|Τράχηλος|Θώρακας|Καρδιά|Κοιλιά|Κοιλιά/Πύελος|Οσφυϊκή μοίρα|Κάτω άκρο|"
        "Νεφρικές αρτηρίες|Ήπαρ",
        "χωρίς σκιαγραφικό|με σκιαγραφικό|χωρίς/με σκιαγραφικό|Αγγειογραφία",
        "Ενήλικες|Παιδιατρικό",
        "Παπαδόπουλος^Γεώργιος|Νικολάου^Ελένη|Καραγιάννης^Δημήτρης",
        "Υποψία εγκεφαλικού|Επανέλεγχος|Τραύμα",
        "Αφαιρέστε τα μεταλλικά αντικείμενα|Χέρια πάνω από το κεφάλι",
        "Ετήσια αναθεώρηση από την επιτροπή πρωτοκόλλων.",
    ),
    "ru": _language(
        "Голова|Шея|Грудная клетка|Сердце|Брюшная полость|Живот/таз|Поясничный отдел|"
        "Нижняя конечность|Почечные артерии|Печень",
        "без контраста|с контрастом|без и с контрастом|Ангиография",
        "Взрослые|Дети",
        "Иванова^Ольга|Smirnov^Pavel=Смирнов^Павел|Кузнецов^Андрей",
        "Подозрение на инсульт|Контроль|Травма",
        "Снимите металлические предметы|Руки за голову",
        "Ежегодный пересмотр протокольной комиссией.",
    ),
}


@dataclass(frozen=True)
class Institution:
    """A custodial organization and the language of its protocols."""

    name: str
    code: str  # its local code; "99" + code names its private coding scheme
    department: str
    language: str


_INSTITUTIONS: dict[str, tuple[Institution, ...]] = {
    DEFAULT_REPERTOIRE: (
        Institution("Lakeside General Hospital", "LGH", "Diagnostic Imaging", "en"),
        Institution("St. Anselm Medical Center", "SAMC", "Radiology", "en"),
        Institution("Northfield University Hospital", "NFUH", "Medical Imaging", "en"),
        Institution("Riverbend Imaging Associates", "RBIA", "CT and Angiography", "en"),
    ),
    "ISO_IR 100": (
        Institution("Hôpital Sainte-Thérèse", "HSTH", "Service d'imagerie médicale", "fr"),
        Institution("Städtisches Klinikum Mühlbach", "SKMB", "Institut für Radiologie", "de"),
        Institution("Sygehus Nørreå", "SYNA", "Røntgenafdelingen", "da"),
        Institution("Clínica Nuestra Señora de la Peña", "CNSP", "Radiodiagnóstico", "es"),
    ),
    "ISO_IR 192": (
        Institution("東都大学医学部附属病院", "TDUH", "放射線部", "ja"),
        Institution("聖ルカ画像診断クリニック", "SLIC", "画像診断科", "ja"),
        Institution("Γενικό Νοσοκομείο Αγίας Ειρήνης", "GNAE", "Ακτινολογικό Τμήμα", "el"),
        Institution("Городская больница № 12", "GKB12", "Отделение лучевой диагностики", "ru"),
    ),
}

_TRIALS = (
    ("Northwind Oncology Consortium", "NWO-2023-017", "Low-dose CT lung screening follow-up"),
    ("Lakeside Stroke Network", "LSN-STROKE-04", "Mechanical thrombectomy imaging outcomes"),
    ("Harbor Cardiac Imaging Group", "HCIG-CCTA-2", "Coronary CTA plaque progression"),
)

# --------------------------------------------------------------------------
# One instance's choices


@dataclass
class _Context:
    """Choices shared by the modules of one instance, all drawn from its seed."""

    rng: random.Random
    seed: int
    kind: str
    charset: str
    institution: Institution
    model: Model
    orderable: Orderable
    pediatric: bool
    # A vendor's style: whether constraints carry the optional Selector
    # Attribute Name/Keyword and Measurement Units Code Sequence.
    named_selectors: bool
    units: bool
    acquisitions: int = 0
    reconstructions: int = 0
    storages: int = 0

    @property
    def key(self) -> str:
        """Root of this instance's UIDs."""
        return f"{self.kind}:{self.seed}"

    @property
    def language(self) -> Language:
        return _LANGUAGES[self.institution.language]

    @property
    def local_scheme(self) -> str:
        return f"99{self.institution.code}"

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def some(self, options: Sequence[Any], low: int, high: int) -> list[Any]:
        return self.rng.sample(list(options), min(len(options), self.rng.randint(low, high)))

    def date(self, first_year: int = 2016, last_year: int = 2025) -> str:
        rng = self.rng
        return (
            f"{rng.randint(first_year, last_year)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        )

    def time(self, fraction: bool = True) -> str:
        rng = self.rng
        text = f"{rng.randint(6, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
        return text + (f".{rng.randint(0, 999999):06d}" if fraction and rng.random() < 0.5 else "")


def _context(seed: int, kind: str, charset: str | None) -> _Context:
    if kind not in SOP_CLASS_BY_KIND:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    rng = random.Random(f"dpp:{kind}:{seed}")
    if charset is None:
        charset = CHARSETS[rng.randrange(len(CHARSETS))]
    elif charset == "ISO_IR 6":
        charset = DEFAULT_REPERTOIRE
    if charset not in CHARSETS:
        raise ValueError(f"unsupported charset {charset!r}; use one of {CHARSETS}")
    models = {"CT": _CT_MODELS, "XA": _XA_MODELS, "APPROVAL": _REVIEW_STATIONS}[kind]
    orderables = _XA_ORDERABLES if kind == "XA" else _CT_ORDERABLES
    institutions = _INSTITUTIONS[charset]
    return _Context(
        rng=rng,
        seed=seed,
        kind=kind,
        charset=charset,
        institution=institutions[rng.randrange(len(institutions))],
        model=models[rng.randrange(len(models))],
        orderable=orderables[rng.randrange(len(orderables))],
        pediatric=rng.random() < 0.2,
        named_selectors=rng.random() < 0.4,
        units=rng.random() < 0.6,
    )


# --------------------------------------------------------------------------
# Modules of the Defined Procedure Protocol IODs


def _sop_common(ctx: _Context, ds: Dataset) -> None:
    if ctx.charset:
        ds.SpecificCharacterSet = ctx.charset
    ds.InstanceCreationDate = ctx.date()
    ds.InstanceCreationTime = ctx.time()
    if ctx.chance(0.3):
        ds.TimezoneOffsetFromUTC = ctx.pick(("+0000", "+0100", "+0200", "+0900", "-0500"))
    if ctx.chance(0.3):
        ds.InstanceCreatorUID = _uid("creator", ctx.institution.code)
    if ctx.chance(0.5):
        ds.InstanceNumber = ctx.rng.randint(1, 40)
    ds.SOPClassUID = SOP_CLASS_BY_KIND[ctx.kind]
    ds.SOPInstanceUID = _uid(ctx.key)


def _equipment(ctx: _Context, ds: Dataset) -> None:
    """General and Enhanced General Equipment: the device that created the instance."""
    ds.Manufacturer = ctx.model.manufacturer
    ds.InstitutionName = ctx.institution.name
    ds.InstitutionalDepartmentName = ctx.institution.department
    if ctx.chance(0.5):
        ds.StationName = f"{ctx.institution.code}{ctx.kind[:2]}{ctx.rng.randint(1, 9)}"
    ds.ManufacturerModelName = ctx.model.model
    ds.DeviceSerialNumber = str(ctx.rng.randint(10000, 999999))
    ds.SoftwareVersions = _vm(ctx.model.software)


def _protocol_name(ctx: _Context) -> str:
    lang, orderable = ctx.language, ctx.orderable
    population = lang.population[ctx.pediatric]
    region = lang.regions[orderable.region]
    contrast = lang.contrast[orderable.contrast]
    body = f"{contrast} {region}" if orderable.contrast == "angio" else f"{region} {contrast}"
    variant = ctx.pick(("", "", " Low Dose", " v2", " v3", " Routine", " Follow-up"))
    return f"{ctx.kind} {population} {body}{variant}"[:64]


def _protocol_context(ctx: _Context, ds: Dataset) -> None:
    inst, orderable, lang = ctx.institution, ctx.orderable, ctx.language
    ds.CustodialOrganizationSequence = [
        _ds(
            InstitutionName=inst.name,
            InstitutionCodeSequence=[_code_item(inst.code, ctx.local_scheme, inst.name)],
        )
    ]
    if ctx.kind == "XA":
        group = _INTERVENTIONAL
    elif ctx.pediatric:
        group = _PEDIATRIC_RADIOLOGY
    else:
        group = _RESPONSIBLE.get(orderable.region, _RADIOLOGY)
    ds.ResponsibleGroupCodeSequence = [group.item()]
    ds.ProtocolName = _protocol_name(ctx)
    version = ctx.pick((None, "2.5", "2.6"))
    scheduled = [_code_item(orderable.rpid, RADLEX, orderable.meaning, version)]
    if ctx.chance(0.6):  # the site's own protocol code, sometimes a long one
        number = ctx.rng.randint(100, 9999)
        local = f"{inst.code}-{orderable.region}-{number}" if ctx.chance(0.3) else f"P{number:04d}"
        scheduled.append(_code_item(local, ctx.local_scheme, ds.ProtocolName))
    ds.PotentialScheduledProtocolCodeSequence = scheduled
    if ctx.chance(0.7):
        procedure = f"{ctx.kind}{ctx.rng.randint(1000, 9999)}"
        ds.PotentialRequestedProcedureCodeSequence = [
            _code_item(procedure, ctx.local_scheme, orderable.meaning)
        ]
    reasons = _REGIONS[orderable.region].reasons
    if ctx.chance(0.7):
        ds.PotentialReasonsForProcedure = _vm(ctx.some(lang.reasons, 1, 3))
    if ctx.chance(0.8):
        ds.PotentialReasonsForProcedureCodeSequence = [c.item() for c in ctx.some(reasons, 1, 3)]
    if ctx.chance(0.3):
        tasks = ("Detection", "Characterization", "Staging", "Treatment planning")
        ds.PotentialDiagnosticTasks = _vm(ctx.some(tasks, 1, 2))
    if orderable.contrast != "none" and ctx.chance(0.4):
        ds.ContraindicationsCodeSequence = [_RENAL_FAILURE.item()]
    if ctx.chance(0.35):  # a newer version of an earlier protocol
        ds.PredecessorProtocolSequence = [
            _ds(
                ReferencedSOPClassUID=SOP_CLASS_BY_KIND[ctx.kind],
                ReferencedSOPInstanceUID=_uid(ctx.key, "predecessor"),
            )
        ]
    if ctx.chance(0.3):
        ds.ProtocolPlanningInformation = lang.planning
    if ctx.chance(0.2):
        ds.ProtocolDesignRationale = f"{orderable.meaning}; shared by {ctx.model.group} scanners."
    ds.ContentCreatorName = ctx.pick(lang.people)


def _clinical_trial(ctx: _Context, ds: Dataset) -> None:
    sponsor, protocol_id, name = ctx.pick(_TRIALS)
    ds.ClinicalTrialSponsorName = sponsor
    ds.ClinicalTrialProtocolID = protocol_id
    ds.ClinicalTrialProtocolName = name
    ds.ClinicalTrialSiteID = f"S{ctx.rng.randint(1, 40):02d}"
    ds.ClinicalTrialSiteName = ctx.institution.name
    if ctx.chance(0.5):
        ds.ClinicalTrialProtocolEthicsCommitteeName = f"{ctx.institution.name[:50]} IRB"
        ds.ClinicalTrialProtocolEthicsCommitteeApprovalNumber = f"IRB-{ctx.rng.randint(1, 99999)}"


# -- Attribute Value Constraint Macro (PS3.3 Table 10.25-1)


def _typed(vr: str, value: Any) -> Any:
    """`value` in the Python form pydicom reads back for `vr` (DS text never has float noise)."""
    if vr == "DS":
        return f"{value:.6g}"
    if vr == "IS":
        return str(value)
    if vr in ("FD", "FL"):
        return float(value)
    return value


@functools.cache
def _selector(keyword: str) -> tuple[BaseTag, str, str, str]:
    """Selector Attribute, its VR, the keyword of Selector <VR> Value, and the attribute's name."""
    tag, vr = _spec(keyword)
    return tag, vr, f"Selector{vr}Value", dictionary_description(tag)


def _constraint(
    ctx: _Context,
    keyword: str,
    constraint_type: str,
    values: Sequence[Any],
    pointer: Sequence[BaseTag] = (),
    items: Sequence[int] = (),
    *,
    units: str | None = None,
    default: Any = None,
    significance: str | None = None,
    modifiable: str | None = None,
) -> Dataset:
    """One specification item constraining `keyword`.

    `pointer` and `items` locate the attribute in the performed protocol
    (Selector Sequence Pointer and Selector Sequence Pointer Items); RANGE_*
    take two values, MEMBER_OF one or more, the others one.
    """
    tag, vr, value_keyword, name = _selector(keyword)
    return _ds(
        SelectorAttribute=tag,
        SelectorValueNumber=1,
        SelectorSequencePointer=_vm(pointer) if pointer else None,
        SelectorSequencePointerItems=_vm([str(i) for i in items]) if items else None,
        SelectorAttributeVR=vr,
        SelectorAttributeName=name if ctx.named_selectors else None,
        SelectorAttributeKeyword=keyword if ctx.named_selectors else None,
        MeasurementUnitsCodeSequence=(
            [_code_item(units, UCUM, _UNITS[units])] if units and ctx.units else None
        ),
        ConstraintType=constraint_type,
        ConstraintValueSequence=[_ds(**{value_keyword: _typed(vr, v)}) for v in values],
        RecommendedDefaultValueSequence=(
            None if default is None else [_ds(**{value_keyword: _typed(vr, default)})]
        ),
        ConstraintViolationSignificance=significance,
        ModifiableConstraintFlag=modifiable,
    )


class _Element:
    """Collects the constraints on item `number` of a performed-protocol sequence."""

    def __init__(self, ctx: _Context, sequence: BaseTag, number: int) -> None:
        self.ctx, self.sequence, self.number = ctx, sequence, number
        self.constraints: list[Dataset] = []

    def add(
        self, keyword: str, constraint_type: str, *values: Any, beam: int = 0, **extra: Any
    ) -> None:
        """Constrain `keyword` of the element, or of its CT X-Ray Details item `beam`."""
        pointer, items = [self.sequence], [self.number]
        if beam:
            pointer.append(CT_XRAY_DETAILS)
            items.append(beam)
        self.constraints.append(
            _constraint(self.ctx, keyword, constraint_type, values, pointer, items, **extra)
        )

    def maybe(self, probability: float, *args: Any, **extra: Any) -> None:
        """``add`` for an optional constraint that only some protocols state."""
        if self.ctx.chance(probability):
            self.add(*args, **extra)

    def item(self) -> Dataset:
        return _ds(
            ProtocolElementNumber=self.number, ParametersSpecificationSequence=self.constraints
        )


def _patient_specification(ctx: _Context, ds: Dataset) -> None:
    """Constraints on the Patient / Patient Study attributes of the future images (no pointer)."""
    if ctx.pediatric:
        items = [
            _constraint(ctx, "PatientAge", "LESS_THAN", ["018Y"], significance="WARNING"),
            _constraint(ctx, "PatientWeight", "RANGE_INCL", [3, ctx.pick((40, 60))], units="kg"),
        ]
    else:
        items = [_constraint(ctx, "PatientAge", "GREATER_OR_EQUAL", ["018Y"])]
        if ctx.chance(0.5):
            limit = ctx.pick((150, 200, 227))
            items.append(_constraint(ctx, "PatientWeight", "LESS_OR_EQUAL", [limit], units="kg"))
    if ctx.chance(0.4):  # 1 = not pregnant, 4 = unknown
        items.append(
            _constraint(ctx, "PregnancyStatus", "MEMBER_OF", [1, 4], significance="FAILURE")
        )
    ds.PatientSpecificationSequence = items


def _equipment_specification(ctx: _Context, ds: Dataset) -> None:
    ds.EquipmentModality = ctx.kind
    models = _XA_MODELS if ctx.kind == "XA" else _CT_MODELS
    siblings = [m for m in models if m.manufacturer == ctx.model.manufacturer and m != ctx.model]
    items = []
    for model in [ctx.model, *ctx.some(siblings, 0, 2)]:
        item = _ds(
            Manufacturer=model.manufacturer,
            ManufacturerRelatedModelGroup=model.group,
            ManufacturerModelName=model.model if ctx.chance(0.8) else None,
            SoftwareVersions=_vm(model.software),
        )
        if model is ctx.model and ctx.chance(0.3):  # tuned for one scanner
            item.DeviceSerialNumber = ds.DeviceSerialNumber
        items.append(item)
    ds.ModelSpecificationSequence = items


def _instructions(ctx: _Context, ds: Dataset) -> None:
    texts = ctx.some(ctx.language.instructions, 1, 2)
    ds.InstructionSequence = [
        _ds(InstructionIndex=i, InstructionText=text) for i, text in enumerate(texts, start=1)
    ]


def _patient_positioning(ctx: _Context, ds: Dataset) -> None:
    region = _REGIONS[ctx.orderable.region]
    feet_first = ctx.orderable.region == "LOWER_LIMB" or ctx.chance(0.05)
    ds.ProtocolDefinedPatientPosition = "FFS" if feet_first else "HFS"
    landmark = region.landmark.meaning.split(" (")[0]
    texts = ctx.some(ctx.language.instructions, 1, 2)
    ds.PatientPositioningInstructionSequence = [
        _ds(
            InstructionIndex=i,
            InstructionText=text,
            InstructionDescription=f"{text}. Center on {landmark}." if i == 1 else None,
        )
        for i, text in enumerate(texts, start=1)
    ]
    if ctx.chance(0.6):
        ds.PositioningMethodCodeSequence = [_LASER_CROSSHAIRS.item()]
    if ctx.chance(0.7):
        ds.PositioningLandmarkSequence = [
            _ds(
                ReferenceLocationLabel=landmark,
                ReferenceLocationDescription=f"Laser line at {landmark}",
                ReferenceBasisCodeSequence=[region.landmark.item()],
                OffsetDistance=str(ctx.pick((10, 20, 50))) if ctx.chance(0.4) else None,
                OffsetDirection=ctx.pick(("SUPERIOR", "INFERIOR")) if ctx.chance(0.4) else None,
            )
        ]
    ds.AnatomicRegionSequence = [region.anatomy.item()]


# -- General Defined Acquisition / Reconstruction, Defined Storage


def _ct_acquisition(ctx: _Context, number: int, name: str, localizer: bool) -> Dataset:
    """Constraints on CT acquisition element `number` (and its X-Ray Details beams)."""
    element = _Element(ctx, ACQUISITION_ELEMENTS, number)
    element.add("ProtocolElementName", "EQUAL", name)
    if localizer:
        element.add("AcquisitionType", "EQUAL", "CONSTANT_ANGLE")
        element.add("KVP", "EQUAL", ctx.pick((100, 120)), beam=1, units="kV")
        element.add("XRayTubeCurrentInmA", "RANGE_INCL", 10, ctx.pick((35, 50)), beam=1, units="mA")
        return element.item()
    head = ctx.orderable.region in ("HEAD", "NECK")
    ctdi = (25 if ctx.pediatric else 80) if head else (10 if ctx.pediatric else 30)
    sequenced = head and ctx.chance(0.4)
    element.add("AcquisitionType", "EQUAL", "SEQUENCED" if sequenced else "SPIRAL")
    rotations = ctx.some((0.25, 0.28, 0.33, 0.5, 1.0), 1, 3)
    element.add("RevolutionTime", "MEMBER_OF", *rotations, units="s")
    detector = {"units": "mm", "modifiable": "NO", "significance": "FAILURE"}
    element.add("SingleCollimationWidth", "EQUAL", ctx.pick((0.5, 0.6, 0.625)), **detector)
    coverage = ctx.pick((38.4, 40.0, 80.0))
    element.maybe(0.5, "TotalCollimationWidth", "LESS_OR_EQUAL", coverage, units="mm")
    if not sequenced:
        pitch, top = ctx.pick((0.6, 0.8, 0.9, 1.0)), ctx.pick((1.2, 1.5, 3.2))
        element.add("SpiralPitchFactor", "RANGE_INCL", 0.5, top, units="1", default=pitch)
        speed = ctx.pick((100.0, 300.0, 737.0))
        element.maybe(0.3, "TableSpeed", "LESS_OR_EQUAL", speed, units="mm/s")
    element.maybe(0.3, "DataCollectionDiameter", "LESS_OR_EQUAL", 500, units="mm")
    element.add("CTDIvolNotificationTrigger", "EQUAL", ctdi, units="mGy", significance="WARNING")
    element.maybe(
        0.5, "DLPNotificationTrigger", "EQUAL", ctdi * 15, units="mGy.cm", significance="WARNING"
    )
    dual_source = "Dual Source" in ctx.model.group
    kv_low, kv_high = (
        (70, 100) if ctx.pediatric else (ctx.pick((80, 90, 100)), ctx.pick((120, 140)))
    )
    for beam in (1, 2) if dual_source else (1,):
        default = kv_high if beam == 1 else kv_low
        element.add("KVP", "RANGE_INCL", kv_low, kv_high, beam=beam, units="kV", default=default)
        low, high = ctx.pick((20, 50)), ctx.pick((400, 800, 1300))
        element.add(
            "XRayTubeCurrentInmA", "RANGE_INCL", low, high, beam=beam, units="mA", modifiable="YES"
        )
        element.maybe(
            0.4, "ExposureTimeInms", "LESS_OR_EQUAL", ctx.pick((500, 1000)), beam=beam, units="ms"
        )
        filters = ctx.some(("FLAT", "WEDGE", "BUTTERFLY"), 1, 2)
        element.maybe(0.4, "FilterType", "MEMBER_OF", *filters, beam=beam)
        element.maybe(
            0.2, "FocalSpots", "LESS_OR_EQUAL", ctx.pick((0.7, 1.0, 1.2)), beam=beam, units="mm"
        )
    return element.item()


def _xa_acquisition(ctx: _Context, number: int, name: str, localizer: bool) -> Dataset:
    """Constraints on XA acquisition element `number`."""
    element = _Element(ctx, ACQUISITION_ELEMENTS, number)
    element.add("ProtocolElementName", "EQUAL", name)
    element.add("RadiationSetting", "EQUAL", "SC" if localizer else "GR")
    element.add("RadiationMode", "EQUAL", ctx.pick(("PULSED", "CONTINUOUS")))
    element.add("KVP", "RANGE_INCL", ctx.pick((60, 70)), ctx.pick((100, 110, 125)), units="kV")
    element.add(
        "XRayTubeCurrent", "LESS_OR_EQUAL", ctx.pick((250, 500, 1000)), units="mA", modifiable="YES"
    )
    element.maybe(0.5, "ExposureTime", "LESS_OR_EQUAL", ctx.pick((10, 20, 100)), units="ms")
    if not localizer:
        rates = ctx.some((2, 3, 4, 6, 15, 30), 1, 3)
        element.add("CineRate", "MEMBER_OF", *rates, units="/s", default=rates[0])
    swing = ctx.pick((30, 45, 90))
    element.maybe(0.5, "PositionerPrimaryAngle", "RANGE_INCL", -swing, swing, units="deg")
    tilt = ctx.pick((20, 40))
    element.maybe(0.4, "PositionerSecondaryAngle", "RANGE_INCL", -tilt, tilt, units="deg")
    element.maybe(
        0.3, "DistanceSourceToDetector", "RANGE_INCL", 900, ctx.pick((1200, 1250)), units="mm"
    )
    element.maybe(0.3, "FilterMaterial", "MEMBER_OF", *ctx.some(("COPPER", "ALUMINUM"), 1, 2))
    element.maybe(0.3, "PositionerMotion", "EQUAL", "DYNAMIC" if "3D" in name else "STATIC")
    return element.item()


def _reconstruction(ctx: _Context, number: int, source: int, label: str, thin: bool) -> Dataset:
    element = _Element(ctx, RECONSTRUCTION_ELEMENTS, number)
    thickness = ctx.pick((0.5, 0.6, 0.625, 0.75, 1.0) if thin else (2.0, 3.0, 5.0))
    element.add("SourceAcquisitionProtocolElementNumber", "EQUAL", source, modifiable="NO")
    element.add("RequestedSeriesDescription", "EQUAL", label)
    element.add("SliceThickness", "EQUAL", thickness, units="mm")
    element.maybe(0.5, "SpacingBetweenSlices", "LESS_OR_EQUAL", thickness, units="mm")
    if ctx.kind == "CT":
        element.maybe(
            0.5, "ReconstructionDiameter", "RANGE_INCL", ctx.pick((180, 250)), 500, units="mm"
        )
        element.add("ConvolutionKernel", "MEMBER_OF", *ctx.some(ctx.model.kernels, 1, 2))
        element.maybe(
            0.5, "ReconstructionAlgorithm", "EQUAL", ctx.pick(("ITERATIVE", "FILTER_BACK_PROJ"))
        )
    return element.item()


def _storage(ctx: _Context, number: int, source: int) -> Dataset:
    element = _Element(ctx, STORAGE_ELEMENTS, number)
    element.add("SourceReconstructionProtocolElementNumber", "EQUAL", source)
    # The destination sits in Output Destination Sequence > DICOM Storage Sequence.
    destination = ctx.pick(("PACS_MAIN", "PACS_ARCHIVE", "CAD_LUNG", "VNA01", "3D_LAB"))
    pointer = [STORAGE_ELEMENTS, OUTPUT_DESTINATIONS, DICOM_STORAGE]
    element.constraints.append(
        _constraint(ctx, "DestinationAE", "EQUAL", [destination], pointer, [number, 1, 1])
    )
    return element.item()


def _add_protocol_element(ctx: _Context, ds: Dataset, name: str, localizer: bool) -> None:
    """One acquisition element, then its reconstructions and their storage."""
    ctx.acquisitions += 1
    acquisition = _xa_acquisition if ctx.kind == "XA" else _ct_acquisition
    ds.AcquisitionProtocolElementSpecificationSequence.append(
        acquisition(ctx, ctx.acquisitions, name, localizer)
    )
    if localizer or (ctx.kind == "XA" and "3D" not in name and not ctx.chance(0.2)):
        return
    thick = f"{name} {ctx.pick(('3mm', '5mm', 'MPR'))}"
    recons = [(f"{name} thin", True), (thick, False)][: ctx.rng.randint(1, 2)]
    for label, thin in recons:
        ctx.reconstructions += 1
        ds.ReconstructionProtocolElementSpecificationSequence.append(
            _reconstruction(ctx, ctx.reconstructions, ctx.acquisitions, label[:64], thin)
        )
        ctx.storages += 1
        ds.StorageProtocolElementSpecificationSequence.append(
            _storage(ctx, ctx.storages, ctx.reconstructions)
        )


def _element_names(ctx: _Context) -> tuple[list[tuple[str, bool]], Iterator[tuple[str, bool]]]:
    """(name, is a localizer) of the base acquisition elements, and of further ones.

    Further elements are what long real protocols repeat: bolus-tracking
    monitoring scans, perfusion time points, extra phases, more DSA runs.
    Names stay ASCII whatever the character set (see ``make_library``).
    """
    if ctx.kind == "XA":
        runs = ("DSA run AP", "DSA run LAT", "3D rotational angio")[: ctx.rng.randint(1, 3)]
        views = ("AP", "LAT", "RAO 30", "LAO 30", "CRAN 20", "CAUD 15")
        more = ((f"DSA run {n} {ctx.pick(views)}", False) for n in itertools.count(len(runs) + 1))
        return [("Fluoro roadmap", True), *((run, False) for run in runs)], more
    base = [(f"{ctx.model.localizer} AP", True)]
    if ctx.chance(0.4):
        base.append((f"{ctx.model.localizer} LAT", True))
    contrast = ctx.orderable.contrast
    if contrast == "both":
        phases: tuple[str, ...] = ("Non-contrast", "Post-contrast")
    elif contrast == "iv":
        phases = ctx.pick((("Portal venous",), ("Arterial", "Portal venous"), ("Post-contrast",)))
    elif contrast == "angio":
        phases = ("Bolus tracking", "Arterial") + (("Delayed",) if ctx.chance(0.3) else ())
    else:
        phases = ("Non-contrast",)
    base += [(phase, phase == "Bolus tracking") for phase in phases]
    kinds = ("Monitoring", "Perfusion", "Delayed", "Phase")
    more = ((f"{ctx.pick(kinds)} {n}", False) for n in itertools.count(1))
    return base, more


_DEFINED_SEQUENCES = (
    "AcquisitionProtocolElementSpecificationSequence",
    "ReconstructionProtocolElementSpecificationSequence",
    "StorageProtocolElementSpecificationSequence",
)


def _defined_procedure(ctx: _Context, ds: Dataset, target_size: int | None) -> None:
    """General Defined Acquisition/Reconstruction and Defined Storage, grown to `target_size`."""
    for keyword in _DEFINED_SEQUENCES:
        setattr(ds, keyword, [])
    base, more = _element_names(ctx)
    for name, localizer in base:
        _add_protocol_element(ctx, ds, name, localizer)
    if target_size is None:
        return
    sequences = [ds[keyword].value for keyword in _DEFINED_SEQUENCES]
    encodings = convert_encodings(ctx.charset or "ISO_IR 6")
    size = len(to_bytes(ds))
    # Add whole elements while that brings the size closer to the target; the
    # bytes each adds are measured exactly by encoding its new items.
    while size < target_size:
        before = [len(seq) for seq in sequences]
        _add_protocol_element(ctx, ds, *next(more))
        added = sum(
            _item_size(item, encodings)
            for seq, count in zip(sequences, before, strict=True)
            for item in seq[count:]
        )
        if size + added - target_size > target_size - size:
            for seq, count in zip(sequences, before, strict=True):
                del seq[count:]
            break
        size += added


def _item_size(item: Dataset, encodings: list[str]) -> int:
    """Bytes a sequence item takes in Explicit VR Little Endian (pydicom writes its length)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, item, encodings)
    return len(fp.getvalue()) + 8  # item tag and length


def _approval(ctx: _Context, ds: Dataset, subject: tuple[str, str] | None) -> None:
    """Protocol Approval Module (C.34.15): one or two assertions about one protocol."""
    if subject is None:  # standalone: approve make_protocol(seed, "CT" or "XA")
        kind = ctx.pick(("CT", "XA"))
        subject = (SOP_CLASS_BY_KIND[kind], _uid(f"{kind}:{ctx.seed}"))
    ds.ApprovalSubjectSequence = [
        _ds(ReferencedSOPClassUID=subject[0], ReferencedSOPInstanceUID=subject[1])
    ]
    inst = ctx.institution
    approvals = []
    for n in range(ctx.rng.randint(1, 2)):
        assertion = ctx.pick(_ASSERTIONS)
        staff_id = f"U{ctx.rng.randint(10000, 99999)}"
        asserter = _ds(  # Identified Person or Device Macro, a person
            ObserverType="PSN",
            PersonName=ctx.pick(ctx.language.people),
            PersonIdentificationCodeSequence=(
                [_code_item(staff_id, ctx.local_scheme, "Staff ID")] if ctx.chance(0.5) else []
            ),
            OrganizationalRoleCodeSequence=[ctx.pick(_ROLES).item()],
        )
        when = ctx.date(2020, 2025) + ctx.time(fraction=False)
        expires = f"{int(when[:4]) + 2}{when[4:]}" if ctx.chance(0.4) else None
        item = _ds(
            AssertionCodeSequence=[assertion.item()],
            AssertionUID=_uid(ctx.key, "assertion", n),
            AsserterIdentificationSequence=[asserter],
            AssertionDateTime=when,
            AssertionExpirationDateTime=expires,
            AssertionComments=ctx.language.planning if ctx.chance(0.3) else None,
        )
        if assertion.value in _NEEDS_INSTITUTION:
            item.InstitutionCodeSequence = [_code_item(inst.code, ctx.local_scheme, inst.name)]
        if assertion.value in _NEEDS_TRIAL:
            item.ClinicalTrialProtocolID = ctx.pick(_TRIALS)[1]
        approvals.append(item)
    ds.ApprovalSequence = approvals


def _set_file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


_Shared = dict[tuple[Any, ...], list[list[Dataset]]]


def _build(
    seed: int,
    kind: str,
    charset: str | None = None,
    target_size: int | None = None,
    subject: tuple[str, str] | None = None,
    shared: _Shared | None = None,
) -> Dataset:
    ctx = _context(seed, kind, charset)
    ds = Dataset()
    _sop_common(ctx, ds)
    _equipment(ctx, ds)
    _set_file_meta(ds)
    if kind == "APPROVAL":
        _approval(ctx, ds, subject)
        return ds
    _protocol_context(ctx, ds)
    if ctx.chance(0.15):
        _clinical_trial(ctx, ds)
    if ctx.chance(0.85):
        _patient_specification(ctx, ds)
    _equipment_specification(ctx, ds)
    if ctx.chance(0.3):
        _instructions(ctx, ds)
    if ctx.chance(0.9):
        _patient_positioning(ctx, ds)
    # Last, so that the rest of the instance does not depend on whether these
    # bulky sequences were built here or taken from a shared template.
    template = (kind, ctx.orderable, ctx.model.manufacturer, ctx.pediatric)
    if shared is not None and template in shared:
        for keyword, items in zip(_DEFINED_SEQUENCES, shared[template], strict=True):
            setattr(ds, keyword, items)
        return ds
    _defined_procedure(ctx, ds, target_size)
    if shared is not None:
        shared[template] = [list(ds[keyword].value) for keyword in _DEFINED_SEQUENCES]
    return ds


# --------------------------------------------------------------------------
# Public API


def make_protocol(
    seed: int,
    kind: str = "CT",
    *,
    charset: str | None = None,
    target_size: int | None = None,
) -> Dataset:
    """A realistic DPP (kind "CT" or "XA") or Protocol Approval ("APPROVAL") instance.

    The same arguments always give an identical dataset, with its file meta
    (Explicit VR Little Endian). `charset` is one of ``CHARSETS`` ("" or
    "ISO_IR 6" is the default repertoire: no Specific Character Set), or None
    to let the seed choose. `target_size` asks for about that many bytes once encoded by
    ``to_bytes``: acquisition protocol elements (with their reconstructions
    and storage) are added the way long multi-phase protocols grow; approvals
    ignore it. An approval approves ``make_protocol(seed, kind)`` for the kind
    its Approval Subject Sequence's Referenced SOP Class UID names.
    """
    return _build(seed, kind, charset, target_size)


def make_library(
    count: int, seed: int = 0, kinds: Iterable[str] = ("CT", "XA")
) -> Iterator[Dataset]:
    """`count` distinct instances, cheaply; kinds in turn, item i from seed ``seed + i``.

    Item i equals ``make_protocol(seed + i, kind)`` except in two ways that
    make a 100,000-instance library affordable and coherent:

    * the three bulky Specification sequences (General Defined Acquisition,
      Reconstruction, Defined Storage) are built once per (kind, orderable,
      manufacturer, population) and the same item datasets are then shared by
      every instance of the library with those traits: treat them as
      read-only (all other elements belong to one instance only);
      about 1,500-2,000 instances/s instead of about 500/s, ~40 KB of memory
      each, so stream a 100,000-instance library rather than list it;
    * an approval approves the protocol generated just before it.
    """
    kinds = tuple(kinds)
    shared: _Shared = {}
    last: tuple[str, str] | None = None
    for i in range(count):
        kind = kinds[i % len(kinds)]
        ds = _build(seed + i, kind, subject=last if kind == "APPROVAL" else None, shared=shared)
        if kind != "APPROVAL":
            last = (ds.SOPClassUID, ds.SOPInstanceUID)
        yield ds


def to_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """`ds` as a DICOM Part 10 file (preamble, file meta) in an uncompressed transfer syntax.

    The file meta is copied with only Transfer Syntax UID changed (so a
    caller's deliberately wrong Media Storage SOP Class UID stays), and `ds`
    is not modified. pydicom does all the encoding, deflate included; it does
    not byte-swap OB/OW values for big endian, which is why the pixel data of
    ``make_non_dpp`` reads the same in either byte order.
    """
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"not an uncompressed transfer syntax: {transfer_syntax}")
    meta = FileMetaDataset()
    for elem in getattr(ds, "file_meta", ()):
        meta.add_new(elem.tag, elem.VR, elem.value)  # new elements: ds keeps its own
    if "MediaStorageSOPClassUID" not in meta:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.FileMetaInformationGroupLength = 0  # pydicom writes the real length
    validate_file_meta(meta)  # adds version and implementation UID, checks the rest
    out = Dataset()
    out.update(ds)  # the same elements, another file meta
    out.file_meta = meta
    out.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    # Not enforce_file_format=True: it would overwrite Media Storage SOP
    # Class/Instance UIDs that differ from the dataset's.
    dcmwrite(buffer, out)
    return buffer.getvalue()


#: The kinds ``write_library`` cycles through: three CT protocols, one XA and two
#: approvals, each approval approving the protocol just before it (a CT, then an XA).
SAMPLE_KINDS = ("CT", "CT", "APPROVAL", "CT", "XA", "APPROVAL")


def _file_name(number: int, ds: Dataset) -> str:
    """``0010-ct-adult-head-wo-iv.dcm``: sortable, telling, ASCII only."""
    kind = next(k for k, uid in SOP_CLASS_BY_KIND.items() if uid == ds.SOPClassUID).lower()
    title = str(ds.get("ProtocolName", "")) if kind != "approval" else ""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = "-".join(re.findall(r"[a-z0-9]+", ascii_title.lower()))[:48].rstrip("-")
    if not slug.startswith(kind):  # the name lost to ASCII folding, or an approval
        slug = f"{kind}-{slug}" if slug else kind
    return f"{number:04d}-{slug}.dcm"


def write_library(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Write `count` CT and XA protocols and approvals as Part 10 files into `folder`.

    What ``python -m dpp_tools samples`` writes: ``make_library`` with
    ``SAMPLE_KINDS``, so the same `count` and `seed` always give the same
    files (and UIDs), in Explicit VR Little Endian. The folder is created if
    needed; files of the same names are replaced.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, ds in enumerate(make_library(count, seed, SAMPLE_KINDS), start=1):
        path = folder / _file_name(number, ds)
        path.write_bytes(to_bytes(ds))
        written.append(path)
    return written


def make_non_dpp(seed: int) -> Dataset:
    """A small ordinary CT Image Storage instance, to check that non-DPP classes are refused."""
    rng = random.Random(f"ct-image:{seed}")
    ds = _ds(
        SpecificCharacterSet="ISO_IR 100",
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        SOPClassUID=CTImageStorage,
        SOPInstanceUID=_uid("ct-image", seed),
        StudyDate=f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
        StudyTime=f"{rng.randint(7, 18):02d}{rng.randint(0, 59):02d}00",
        AccessionNumber=f"A{rng.randint(100000, 999999)}",
        Modality="CT",
        Manufacturer="SIEMENS",
        ReferringPhysicianName="Lefèvre^Hélène",
        PatientName=f"Test^NonDPP{seed}",
        PatientID=f"NONDPP{seed:06d}",
        PatientBirthDate="19700101",
        PatientSex=rng.choice(("F", "M", "O")),
        SliceThickness="1",
        KVP="120",
        PatientPosition="HFS",
        StudyInstanceUID=_uid("ct-image", seed, "study"),
        SeriesInstanceUID=_uid("ct-image", seed, "series"),
        StudyID="1",
        SeriesNumber=1,
        InstanceNumber=1,
        ImagePositionPatient=["0", "0", "0"],
        ImageOrientationPatient=["1", "0", "0", "0", "1", "0"],
        FrameOfReferenceUID=_uid("ct-image", seed, "frame"),
        PositionReferenceIndicator="",
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        Rows=4,
        Columns=4,
        PixelSpacing=["0.5", "0.5"],
        BitsAllocated=16,
        BitsStored=12,
        HighBit=11,
        PixelRepresentation=0,
        RescaleIntercept="-1024",
        RescaleSlope="1",
        # 16 pixels whose two bytes are equal (k * 0x0101): the same in both byte orders.
        PixelData=bytes(byte for k in range(16) for byte in (k, k)),
    )
    _set_file_meta(ds)
    return ds
