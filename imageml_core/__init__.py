"""ImageML."""
