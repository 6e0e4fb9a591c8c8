"""Annotation intake: Label Studio export <-> COCO, converted by the Label Studio SDK.

Plain Python (no Dagster). The conversions themselves are ``label_studio_sdk.converter``
(``Converter.convert(..., "COCO")`` and ``imports.coco.convert_coco_to_ls``); this package
chooses what the SDK sees and repairs what it writes, so no annotation is lost or
duplicated and ids are stable (the rules are in :mod:`.ls_to_coco` and :mod:`.coco_to_ls`).
Every conversion returns a :class:`ConversionReport` for the annotation manifest.

Between converters and stages, annotations travel as :class:`Region` values (pixels);
:func:`coco_document` writes a stage's COCO file, :func:`render_label_config` every
labelling config, and :mod:`.intake` matches annotation files to the images they name.

Units: Label Studio regions are percent (0-100) of the original image size, origin at the
top-left; COCO is pixels, ``bbox = [x, y, width, height]`` from the top-left corner.
"""

from imageml_core.annotations.coco import AnnotatedImage, coco_document
from imageml_core.annotations.coco_to_ls import coco_to_ls
from imageml_core.annotations.common import (
    SDK_ENV_VARS,
    AnnotationFormat,
    ConversionReport,
    converter_version,
    detect_format,
    sdk_offline,
)
from imageml_core.annotations.config import (
    infer_label_config,
    label_config_for,
    render_label_config,
    validate_tasks,
)
from imageml_core.annotations.ls_to_coco import CHOICE_RULE, ls_to_coco
from imageml_core.annotations.regions import Region

__all__ = [
    "CHOICE_RULE",
    "SDK_ENV_VARS",
    "AnnotatedImage",
    "AnnotationFormat",
    "ConversionReport",
    "Region",
    "coco_document",
    "coco_to_ls",
    "converter_version",
    "detect_format",
    "infer_label_config",
    "label_config_for",
    "ls_to_coco",
    "render_label_config",
    "sdk_offline",
    "validate_tasks",
]
