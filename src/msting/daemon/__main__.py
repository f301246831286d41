import sys

from msting.daemon.main import main

sys.exit(main())
