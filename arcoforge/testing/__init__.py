"""Helpers for tests, the demo and the benchmark: realistic inputs (archives, ensembles, the
real-file corpus), a loopback HTTP server, engines on loopback and catalog records; and what
the tests share: the ``arcoforge`` command as a subprocess (cli), small recipes (recipes),
comparisons of stores with their sources (compare) and made-up credentials."""
