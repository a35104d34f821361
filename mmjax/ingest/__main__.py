"""`python -m mmjax.ingest KIND ...`: see mmjax/ingest/cli.py."""
import sys

from mmjax.ingest.cli import main

if __name__ == "__main__":
    sys.exit(main())
