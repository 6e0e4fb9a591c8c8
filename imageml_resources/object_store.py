"""Dagster resource for the S3-compatible object store (AWS S3, RustFS, MinIO, SeaweedFS)."""

import dagster as dg
from pydantic import PrivateAttr

from imageml_core.storage.object_store import ObjectStore


class ObjectStoreResource(dg.ConfigurableResource):
    """boto3 (control plane) and obstore (bulk file transfers) against ``endpoint_url``
    (empty = AWS).

    Credentials are not config: boto3's default chain reads ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, a profile or a pod's IAM role, and obstore signs with what
    boto3 resolved, so secrets never show in the Dagster UI.
    """

    endpoint_url: str | None = None
    region: str
    max_concurrency: int = 16
    max_attempts: int = 5

    _client: ObjectStore | None = PrivateAttr(default=None)

    def get_client(self) -> ObjectStore:
        """The resource's :class:`ObjectStore`, created on first call and reused."""
        if self._client is None:
            self._client = ObjectStore(
                endpoint_url=self.endpoint_url,
                region=self.region,
                max_concurrency=self.max_concurrency,
                max_attempts=self.max_attempts,
            )
        return self._client
