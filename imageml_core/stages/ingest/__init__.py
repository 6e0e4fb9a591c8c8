"""Stage 1, ingest step (bronze): stage a planned batch of raw objects on NVMe, verify each
as an image (ZIP archives expanded), register it in the manifest store, quarantine the rest."""
