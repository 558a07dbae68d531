import sys

from kvs.client.cli import main

sys.exit(main())
