"""Demo and test tooling: the embedded SeaweedFS S3 server, the embedded stack and a
synthetic labelled image set. Stage images do not ship this package."""
