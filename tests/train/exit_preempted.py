"""A stand-in training module for launcher tests: every rank exits with the preemption status."""

import sys

from pgl_core.exits import EXIT_PREEMPTED

if __name__ == "__main__":
    sys.exit(EXIT_PREEMPTED)
