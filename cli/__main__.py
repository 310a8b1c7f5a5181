"""`python -m cli COMMAND ...`, the same as the `specserve` console script."""
import sys

from cli.main import main

sys.exit(main())
