from cpu_tracker_daemon.cli.main import entry

entry()
