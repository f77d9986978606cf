"""cpu-tracker: a daemon that publishes a differentially private summary of CPU usage."""

__version__ = "0.1.0"
