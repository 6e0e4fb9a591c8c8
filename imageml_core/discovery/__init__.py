"""Finding new objects under an input prefix and planning them into batches: by polling the
prefix after a cursor (:mod:`.polling`) or from S3/EventBridge events on SQS (:mod:`.events`).
Both share the batch rules (:mod:`.batches`); the manifest store decides what is new."""

from imageml_core.discovery.batches import (
    PlannedBatch,
    batch_id_for,
    group_into_batches,
    new_objects,
)
from imageml_core.discovery.polling import Discovery, DiscoveryCursor, discover

__all__ = [
    "Discovery",
    "DiscoveryCursor",
    "PlannedBatch",
    "batch_id_for",
    "discover",
    "group_into_batches",
    "new_objects",
]
