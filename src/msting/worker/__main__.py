"""``python -m msting.worker --fd FD (--spec JSON | --spare)``: one model worker process
(:mod:`msting.worker.main`)."""

import sys

from msting.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
