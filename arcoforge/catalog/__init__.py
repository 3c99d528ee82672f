"""A static website and STAC catalog of what was baked."""
