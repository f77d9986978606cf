"""The long-running daemon: its main loop, signals to the service manager, the instance lock,
and the unit files it is run by."""
