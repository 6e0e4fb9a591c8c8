"""Dagster resource for the SQS queue of S3 / EventBridge "Object Created" events."""

import dagster as dg
from pydantic import PrivateAttr

from imageml_core.discovery.events import SqsEventSource


class EventQueueResource(dg.ConfigurableResource):
    """``queue_url`` is ``RAW_EVENTS_QUEUE_URL`` (passed as ``dg.EnvVar``; empty = event
    mode off, polling still runs). ``endpoint_url`` is ``SQS_ENDPOINT_URL`` (empty = AWS).
    Credentials come from boto3's default chain, as for the object store."""

    queue_url: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    max_messages: int = 50
    visibility_timeout_s: int = 300

    _source: SqsEventSource | None = PrivateAttr(default=None)

    @property
    def url(self) -> str:
        """``queue_url`` stripped as Settings strips it (an EnvVar hands it over as is)."""
        return (self.queue_url or "").strip()

    @property
    def enabled(self) -> bool:
        """True when a queue URL is set (event mode on)."""
        return bool(self.url)

    def get_source(self) -> SqsEventSource:
        """The queue client; raises ``ValueError`` when event mode is off."""
        if not self.url:
            raise ValueError("RAW_EVENTS_QUEUE_URL is not set")
        if self._source is None:
            self._source = SqsEventSource(
                self.url, endpoint_url=self.endpoint_url, region=self.region
            )
        return self._source
