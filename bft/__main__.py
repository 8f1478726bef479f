"""`python -m bft`: the `bft` command line."""

from bft.cli import main

raise SystemExit(main())
