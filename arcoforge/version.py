"""The version of arcoforge: workers and drivers compare theirs at start-up."""

__version__ = "0.2.0"
