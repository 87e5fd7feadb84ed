"""`python -m squeeze.cli ...`"""

from squeeze.cli import run

run()
