"""`python -m bench`: the whole comparison (see bench/run.py)."""
from bench.run import main

raise SystemExit(main())
