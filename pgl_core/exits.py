"""Exit statuses of every ``pgl`` command and training module (no imports: the CLI reads them
before anything heavy loads). 0 all done; 1 some work failed (the others finished; for a training,
it failed); 2 usage or configuration error; 75 preempted by SIGTERM after a checkpoint (rerun the
same command to resume)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PREEMPTED = 0, 1, 2, 75
EXIT_PARTIAL = EXIT_FAILED  # a batch command: some items failed after all others finished
