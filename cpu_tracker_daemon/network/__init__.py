"""The network view: reading peers' releases, the estimate, the aggregation pass, the dashboard
and the Prometheus textfile."""
