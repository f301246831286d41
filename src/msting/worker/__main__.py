"""``python -m msting.worker --fd FD --spec JSON``: one model worker process."""

import sys

from msting.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
