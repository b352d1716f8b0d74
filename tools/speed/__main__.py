"""``python -m tools.speed``: the reference-against-fast timing harness (:mod:`tools.speed.run`)."""
import sys

from tools.speed.run import main

sys.exit(main())
