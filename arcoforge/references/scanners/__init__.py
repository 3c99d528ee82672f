"""One scanner per input format: an input's chunks as a :class:`~arcoforge.references.manifest.Manifest`."""
