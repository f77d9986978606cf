"""Names the command line offers before anything else is loaded: the choices of its options.
The modules that own them (:mod:`config`, :mod:`service`) take them from here, so ``--help``
needs neither."""

APP_NAME = "cpu-tracker"
LOG_FORMATS = ("auto", "json", "console")  # auto: console on a terminal, JSON elsewhere
MANAGERS = ("systemd", "launchd")  # the service managers ``service`` writes files for
