"""Dagster resource for the manifest store (PostgreSQL in production, SQLite embedded)."""

import threading

import dagster as dg
from pydantic import PrivateAttr

from imageml_core.manifest import ManifestStore, SqlManifestStore

_stores: dict[str, SqlManifestStore] = {}
_lock = threading.Lock()


def open_manifest_store(url: str) -> SqlManifestStore:
    """One migrated store (and connection pool) per URL per process."""
    with _lock:
        store = _stores.get(url)
        if store is None:
            store = SqlManifestStore(url)
            store.migrate()
            _stores[url] = store
        return store


class ManifestStoreResource(dg.ConfigurableResource):
    """``url`` is ``MANIFEST_DB_URL`` (a SQLAlchemy URL, often with a password): pass it as
    ``dg.EnvVar("MANIFEST_DB_URL")`` so the UI and run config show the variable's name,
    never its value. The schema is upgraded on first use."""

    url: str

    _store: ManifestStore | None = PrivateAttr(default=None)

    def get_store(self) -> ManifestStore:
        """The process-wide, migrated store for ``url`` (:func:`open_manifest_store`)."""
        if self._store is None:
            # Stripped as Settings strips it: a secret made from a file often ends in "\n",
            # and the EnvVar hands the variable over as it is.
            self._store = open_manifest_store(self.url.strip())
        return self._store
