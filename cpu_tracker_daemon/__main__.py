from cpu_tracker_daemon.cli import main

raise SystemExit(main())
