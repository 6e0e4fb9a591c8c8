"""The `imageml` command line."""
