"""Object storage and local NVMe staging: how bytes move between S3 and a node's disk."""
