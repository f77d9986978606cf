"""Where noise comes from: the mechanisms, the integer grid they draw on, the accounting of what
a release costs, and the child process that draws."""
