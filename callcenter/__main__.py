"""Allow ``python -m callcenter``."""

from callcenter.cli import main

main()
