"""`python -m vmxaddr`: the command line, for a checkout whose console script is not installed."""
import sys

from vmxaddr.cli import main

sys.exit(main())
