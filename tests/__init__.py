"""Tests, in packages mirroring arcoforge's (packages, so that test modules of the same name
in two folders do not clash); shared helpers are in :mod:`arcoforge.testing`, whose
assertions pytest rewrites as it does the tests' own, to show the values that differ."""

import pytest

pytest.register_assert_rewrite("arcoforge.testing")
