import sys

from kvs.server.main import main

sys.exit(main())
