"""The ``cpu-tracker`` command line: one module per command, and the exit codes."""
