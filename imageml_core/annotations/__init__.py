"""Annotation intake: Label Studio export <-> COCO, converted by the Label Studio SDK.

Plain Python (no Dagster). The conversions themselves are ``label_studio_sdk.converter``
(``Converter.convert(..., "COCO")`` and ``imports.coco.convert_coco_to_ls``); this package
chooses what the SDK sees and repairs what it writes, so no annotation is lost or
duplicated and ids are stable (the rules are in :mod:`.ls_to_coco` and :mod:`.coco_to_ls`).
Every conversion returns a :class:`ConversionReport` for the annotation manifest.

Units: Label Studio regions are percent (0-100) of the original image size, origin at the
top-left; COCO is pixels, ``bbox = [x, y, width, height]`` from the top-left corner.
"""

from imageml_core.annotations.coco_to_ls import coco_to_ls
from imageml_core.annotations.common import (
    SDK_ENV_VARS,
    AnnotationFormat,
    ConversionReport,
    converter_version,
    detect_format,
    sdk_offline,
)
from imageml_core.annotations.config import label_config_for, validate_tasks
from imageml_core.annotations.ls_to_coco import CHOICE_RULE, ls_to_coco

__all__ = [
    "CHOICE_RULE",
    "SDK_ENV_VARS",
    "AnnotationFormat",
    "ConversionReport",
    "coco_to_ls",
    "converter_version",
    "detect_format",
    "label_config_for",
    "ls_to_coco",
    "sdk_offline",
    "validate_tasks",
]
