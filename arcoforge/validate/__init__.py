"""``arcoforge validate``: a finished store seen from outside, checked and compared with its
sources."""
