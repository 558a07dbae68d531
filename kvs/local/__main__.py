"""`python -m kvs.local N`: scripts/cluster.sh (kvs.local.cluster)."""

import sys

from kvs.local.cluster import main

sys.exit(main())
