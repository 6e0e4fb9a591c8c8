"""Dagster resource for MLflow tracking and the model registry (stage 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from imageml_core.stages.train.tracking import (
    check_reachable,
    model_version_url,
    redact_uri,
    run_url,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["MlflowResource", "redact_uri"]


class MlflowResource(dg.ConfigurableResource):
    """``tracking_uri`` and ``registry_uri`` are ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_REGISTRY_URI`` (they may carry credentials: pass them as ``dg.EnvVar`` so the
    UI shows the variable's name; None leaves MLflow to read its environment, and the
    registry follows tracking); ``experiment_name`` the experiment runs go to;
    ``registered_model_name`` the registry entry versions go to.

    ``mlflow`` is imported on first use, not with the Dagster definitions (it takes seconds).
    """

    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment_name: str = "imageml"
    registered_model_name: str = "imageml-detection"

    def resolved_tracking_uri(self) -> str:
        """The tracking URI in effect: ``tracking_uri`` or MLflow's default
        (``MLFLOW_TRACKING_URI``, else its local store). May hold credentials: print it
        only through :func:`redact_uri`."""
        if self.tracking_uri and self.tracking_uri.strip():
            # Stripped: a secret made from a file often ends in "\n".
            return self.tracking_uri.strip()
        import mlflow

        return mlflow.get_tracking_uri()

    def resolved_registry_uri(self) -> str | None:
        """``registry_uri`` stripped, or None (MLflow then uses the tracking URI)."""
        return (
            self.registry_uri.strip() if self.registry_uri and self.registry_uri.strip() else None
        )

    def get_client(self) -> MlflowClient:
        """A client for this tracking server and registry."""
        from mlflow import MlflowClient

        return MlflowClient(
            tracking_uri=self.resolved_tracking_uri(), registry_uri=self.resolved_registry_uri()
        )

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Raise :class:`~imageml_core.stages.train.tracking.TrackingError` (one line,
        credentials redacted) unless the tracking server answers within ``timeout_s``
        seconds; a non-HTTP tracking URI passes."""
        check_reachable(self.resolved_tracking_uri(), timeout_s)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """The run's page in the MLflow UI, without credentials ("" for a non-HTTP URI)."""
        return run_url(self.resolved_tracking_uri(), experiment_id, run_id)

    def model_version_url(self, version: str | int, name: str | None = None) -> str:
        """The model version's page in the MLflow UI (``name`` default
        ``registered_model_name``), without credentials ("" for a non-HTTP URI)."""
        return model_version_url(
            self.resolved_tracking_uri(), name or self.registered_model_name, str(version)
        )

    def url_metadata(
        self, *, experiment_id: str, run_id: str, version: str | int | None = None
    ) -> dict[str, dg.MetadataValue]:
        """Dagster metadata linking to the run and, given ``version``, the model version:
        ``mlflow_run_url`` and ``mlflow_model_version_url`` (empty when there is no UI)."""
        links = {"mlflow_run_url": self.run_url(experiment_id, run_id)}
        if version is not None:
            links["mlflow_model_version_url"] = self.model_version_url(version)
        return {key: dg.MetadataValue.url(url) for key, url in links.items() if url}
