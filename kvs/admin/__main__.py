import sys

from kvs.admin.cli import main

sys.exit(main())
