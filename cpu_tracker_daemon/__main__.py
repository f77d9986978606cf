from cpu_tracker_daemon.cli import entry

entry()
